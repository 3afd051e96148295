"""Batched evaluation of any detector: metrics per class, saved predictions, heatmap overlays."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .detector import AnomalyDetector
from ..metrics import AnomalyEvaluator, MetricsReport
from .precision import autocast
from .references import MemoryBank, predict_with_references

logger = logging.getLogger(__name__)

METRIC_LEVELS = ("image-level", "pixel-level", "image-pixel-level")


class PredictionWriter:
    """Collects per-class predictions in dataset order and writes one ``.npz`` per class."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.records: Dict[str, Dict[str, List]] = defaultdict(lambda: defaultdict(list))

    def add(self, class_names: List[str], paths: List[str], labels: torch.Tensor, scores: torch.Tensor,
            maps: torch.Tensor) -> None:
        labels, scores, maps = labels.cpu().numpy(), scores.float().cpu().numpy(), maps.float().cpu().numpy()
        for i, name in enumerate(class_names):
            record = self.records[name]
            record["paths"].append(paths[i])
            record["labels"].append(labels[i])
            record["scores"].append(scores[i])
            record["maps"].append(maps[i])

    def write(self) -> List[Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, record in self.records.items():
            path = self.directory / f"{_safe_name(name)}.npz"
            np.savez(path, paths=np.array(record["paths"]), labels=np.array(record["labels"], dtype=np.int64),
                     scores=np.array(record["scores"], dtype=np.float32),
                     maps=np.stack(record["maps"]).astype(np.float32))
            written.append(path)
        logger.info("Wrote predictions of %d classes to %s", len(written), self.directory)
        return written


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def heatmap_overlay(image: np.ndarray, mask: np.ndarray, anomaly_map: np.ndarray) -> np.ndarray:
    """Side-by-side RGB panel: image | ground-truth mask | anomaly map blended over the image.

    ``image`` (H, W, 3) uint8, ``mask`` (H, W) in {0, 1}, ``anomaly_map`` (H, W) float; the map
    is min-max scaled per image for display only.
    """
    span = float(anomaly_map.max() - anomaly_map.min())
    scaled = (anomaly_map - anomaly_map.min()) / span if span > 0 else np.zeros_like(anomaly_map)
    colour = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    blended = (0.5 * image + 0.5 * colour).astype(np.uint8)
    mask_rgb = np.repeat((mask > 0.5).astype(np.uint8)[..., None] * 255, 3, axis=2)
    return np.concatenate([image, mask_rgb, blended], axis=1)


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
    one compact host copy per class (see :class:`anomaly_clip.metrics.AnomalyEvaluator`).
    """
    if metrics not in METRIC_LEVELS:
        raise ValueError(f"metrics must be one of {METRIC_LEVELS}, got {metrics!r}")
    if metrics != "image-level" and getattr(dataset, "has_masks", True) is False:
        logger.warning("The dataset has no masks (image-level only): reporting image-level metrics only")
        metrics = "image-level"
    detector.eval()
    device = detector.device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    fuses_scores = type(detector).class_image_scores is not AnomalyDetector.class_image_scores
    evaluator = AnomalyEvaluator(metrics=metrics, aupro=aupro,
                                 class_score_transform=detector.class_image_scores if fuses_scores else None)
    writer = PredictionWriter(save_predictions) if save_predictions else None
    for batch in tqdm(loader, desc="evaluate", disable=not progress, dynamic_ncols=True, leave=False):
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
    return evaluator.compute()
