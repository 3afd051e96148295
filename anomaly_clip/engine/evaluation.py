"""Batched evaluation of any detector: metrics per class, saved predictions, heatmap overlays."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..clip.backbone import RANDOM_WEIGHTS_WARNING
from ..files import atomic_path
from .detector import AnomalyDetector
from .distributed import (broadcast_object, gather_objects, get_rank, get_world_size, is_main_process, merged_order,
                          shard_dataset)
from ..metrics import AnomalyEvaluator, MetricsReport
from .precision import autocast
from .references import MemoryBank, predict_with_references

logger = logging.getLogger(__name__)

METRIC_LEVELS = ("image-level", "pixel-level", "image-pixel-level")


class PredictionWriter:
    """Collects per-class predictions in dataset order and writes one ``.npz`` per class.

    Under ``torchrun`` each process collects its shard; :meth:`write` hands each class's
    records to rank 0, which alone writes, one class at a time.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.records: Dict[str, Dict[str, List]] = {}

    def add(self, class_names: List[str], paths: List[str], labels: torch.Tensor, scores: torch.Tensor,
            maps: torch.Tensor) -> None:
        labels, scores, maps = labels.cpu().numpy(), scores.float().cpu().numpy(), maps.float().cpu().numpy()
        for i, name in enumerate(class_names):
            record = self.records.setdefault(name, {"paths": [], "labels": [], "scores": [], "maps": []})
            record["paths"].append(paths[i])
            record["labels"].append(labels[i])
            record["scores"].append(scores[i])
            record["maps"].append(maps[i])

    def write(self) -> List[Path]:
        """Write one file per class (on rank 0); the records are released as they are written."""
        if is_main_process():
            self.directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name in merged_order(self.records):
            parts = gather_objects(self.records.pop(name, None))
            if parts is None:
                continue
            record = {key: [item for part in parts if part is not None for item in part[key]]
                      for key in ("paths", "labels", "scores", "maps")}
            path = self.directory / f"{_safe_name(name)}.npz"
            with atomic_path(path) as temporary:
                np.savez(temporary, paths=np.array(record["paths"]),
                         labels=np.array(record["labels"], dtype=np.int64),
                         scores=np.array(record["scores"], dtype=np.float32),
                         maps=np.stack(record["maps"]).astype(np.float32))
            written.append(path)
        if written:
            logger.info("Wrote predictions of %d classes to %s", len(written), self.directory)
        return written


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def colourize(anomaly_map: np.ndarray, value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """(H, W, 3) uint8 JET colours of a map: ``value_range`` fixes the scale shared by many images
    (values outside it saturate); without it the map is min-max scaled on its own."""
    low, high = value_range if value_range is not None else (float(anomaly_map.min()), float(anomaly_map.max()))
    span = high - low
    scaled = np.clip((anomaly_map - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(anomaly_map)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]


def blend(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return (0.5 * image + 0.5 * colour).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray,
                    value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """Side-by-side RGB panel: image | ground-truth mask | anomaly map blended over the image.

    ``image`` (H, W, 3) uint8, ``mask`` (H, W) in {0, 1}, ``anomaly_map`` (H, W) float; the map
    is min-max scaled per image for display unless ``value_range`` is given.
    """
    mask_rgb = np.repeat((mask > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2)
    return np.concatenate([image, mask_rgb, blend(image, colourize(anomaly_map, value_range))], axis=1)


def prediction_panel(image: np.ndarray, anomaly_map: np.ndarray, value_range: Tuple[float, float],
                     mask: Optional[np.ndarray], caption: str) -> np.ndarray:
    """RGB panel for one's own images: image | map overlay on a shared colour scale | predicted
    mask outlined on the image (no outline without a pixel threshold), under a caption strip
    (one line per ``' | '``-separated part)."""
    outlined = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 256))
    if mask is not None:
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(outlined, contours, -1, (255, 0, 0), thickness)
    panel = np.concatenate([image, blend(image, colourize(anomaly_map, value_range)), outlined], axis=1)
    lines = caption.split(" | ")
    widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 1)[0][0] for line in lines)
    scale = min(max(0.3, panel.shape[1] / 1600), (panel.shape[1] - 8) / widest)
    (_, text_height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    step = text_height + baseline + 4
    strip = np.zeros((step * len(lines) + 4, panel.shape[1], 3), dtype=np.uint8)
    for number, line in enumerate(lines):
        cv2.putText(strip, line, (4, step * number + text_height + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return np.concatenate([strip, panel], axis=0)


def write_visualizations(directory: Path, paths: List[str], class_names: List[str], masks: torch.Tensor,
                         maps: torch.Tensor) -> None:
    size = maps.shape[-1]
    for path, name, mask, anomaly_map in zip(paths, class_names, masks.cpu().numpy(), maps.float().cpu().numpy()):
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError(f"cannot read {path} for visualisation")
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC)[..., ::-1]
        panel = heatmap_overlay(image, mask.reshape(size, size), anomaly_map)
        target = directory / _safe_name(name) / f"{_safe_name(Path(path).parent.name)}_{Path(path).stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), panel[..., ::-1])


@torch.inference_mode()
def evaluate(detector: AnomalyDetector, dataset: Dataset, batch_size: int = 8, num_workers: int = 2,
             metrics: str = "image-pixel-level", aupro: str = "compat", precision: str = "auto",
             save_predictions: Optional[str | Path] = None, visualize: Optional[str | Path] = None,
             progress: bool = True, references: Optional[MemoryBank] = None,
             reference_weight: float = 0.5) -> MetricsReport:
    """Run ``detector`` over ``dataset`` in batches and compute per-class metrics; with a memory
    bank of normal ``references``, predictions are fused with it (see :mod:`.references`).

    Predictions stay on the device until they are handed to the metric accumulator, which keeps
    one compact host copy per class (see :class:`anomaly_clip.metrics.AnomalyEvaluator`). The
    report of a random (untrained) backbone carries a caveat that every table repeats.
    Under ``torchrun`` each process scores a contiguous share of whole batches (the very batches
    a single process would form) and the metrics come out of :func:`gather_report`; every
    process returns the same report, equal to a single process's.
    """
    if metrics not in METRIC_LEVELS:
        raise ValueError(f"metrics must be one of {METRIC_LEVELS}, got {metrics!r}")
    if metrics != "image-level" and getattr(dataset, "has_masks", True) is False:
        logger.warning("The dataset has no masks (image-level only): reporting image-level metrics only")
        metrics = "image-level"
    detector.eval()
    device = detector.device
    loader = DataLoader(shard_dataset(dataset, block=batch_size), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, pin_memory=device.type == "cuda")
    fuses_scores = type(detector).class_image_scores is not AnomalyDetector.class_image_scores
    evaluator = AnomalyEvaluator(metrics=metrics, aupro=aupro,
                                 class_score_transform=detector.class_image_scores if fuses_scores else None)
    writer = PredictionWriter(save_predictions) if save_predictions else None
    show = progress and is_main_process()
    for batch in tqdm(loader, desc="evaluate", disable=not show, dynamic_ncols=True, leave=False):
        images = batch["image"].to(device, non_blocking=True)
        class_names = list(batch["class_name"])
        with autocast(device, precision):
            if references is None:
                prediction = detector.predict(images, class_names)
            else:
                prediction = predict_with_references(detector, images, class_names, references, reference_weight)
        masks = batch["mask"].to(device).reshape(images.shape[0], *prediction.maps.shape[-2:]) > 0.5
        labels = batch["label"].to(device)
        evaluator.update(class_names, labels, prediction.scores, prediction.maps, masks)
        if writer is not None:
            writer.add(class_names, list(batch["path"]), labels, prediction.scores, prediction.maps)
        if visualize:
            write_visualizations(Path(visualize), list(batch["path"]), class_names, masks, prediction.maps)
    if writer is not None:
        writer.write()
    report = gather_report(evaluator)
    if detector.backbone.config.random_init:
        report.caveat = RANDOM_WEIGHTS_WARNING
    return report


def gather_report(evaluator: AnomalyEvaluator) -> MetricsReport:
    """The report of every process's accumulated predictions, on every process.

    Each class is owned by one process, which receives the class's chunks from the others (in
    rank order, hence dataset order) and computes its metrics, so no process holds every map and
    the per-class work runs in parallel; rank 0 puts the rows in order of first appearance.
    """
    world_size = get_world_size()
    if world_size == 1:
        return evaluator.compute()
    order = merged_order(evaluator.class_names)
    if not order:
        raise ValueError("no predictions were added on any process")
    for position, name in enumerate(order):
        parts = gather_objects(evaluator.pop_class(name), dst=position % world_size)
        if parts is not None:
            evaluator.extend_class(name, [part for part in parts if part is not None])
    rows = gather_objects(evaluator.class_metrics(order[get_rank()::world_size]))
    report = None
    if rows is not None:
        by_name = {row.name: row for part in rows for row in part}
        report = evaluator.report([by_name[name] for name in order])
    return broadcast_object(report)
