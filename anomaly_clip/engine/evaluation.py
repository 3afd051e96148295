"""Batched evaluation of any detector: metrics per class, saved predictions, panels of each
image (drawn by :mod:`.visualization`, written by :mod:`.outputs`)."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..clip.config import RANDOM_WEIGHTS_WARNING
from ..metrics import AnomalyEvaluator, MetricsReport
from .config import METRIC_LEVELS
from .detector import AnomalyDetector
from .distributed import (broadcast_object, gather_objects, get_rank, get_world_size, merged_order,
                          shard_dataset)
from .inference import iterate_batches
from .outputs import EvaluationPanels, OutputWriter, UniqueNames, writer_threads
from .references import MemoryBank, predict_with_references
from .visualization import ColourScale

logger = logging.getLogger(__name__)


def _save_class_predictions(path: Path, record: Dict[str, List]) -> None:
    np.savez(path, paths=np.array(record["paths"]), labels=np.array(record["labels"], dtype=np.int64),
             scores=np.array(record["scores"], dtype=np.float32), maps=np.stack(record["maps"]).astype(np.float32))


class PredictionWriter:
    """Collects per-class predictions in dataset order and writes one ``.npz`` per class, named
    after the class (made a safe, unique file name: :class:`~anomaly_clip.engine.outputs.UniqueNames`).

    Under ``torchrun`` each process collects its shard; :meth:`write` hands each class's
    records to rank 0, which alone writes, one class at a time (a class that cannot be written is
    reported by the writer and the others are still written).
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

    def write(self, writer: Optional[OutputWriter] = None) -> List[Path]:
        """Write one file per class (on rank 0) through ``writer`` (default: one of its own, which
        raises :class:`~anomaly_clip.engine.outputs.OutputWriteError` at the end for a class it
        could not write); the records are released as they are written."""
        own = writer is None
        writer = writer or OutputWriter(threads=0)
        names = UniqueNames()
        written = []
        for name in merged_order(self.records):
            parts = gather_objects(self.records.pop(name, None))
            if parts is None:
                continue
            record = {key: [item for part in parts if part is not None for item in part[key]]
                      for key in ("paths", "labels", "scores", "maps")}
            path = self.directory / f"{names.claim(str(name))}.npz"
            writer.submit(path, partial(_save_class_predictions, record=record), background=False)
            written.append(path)
        if written:
            logger.info("Wrote predictions of %d classes to %s", len(written), self.directory)
        if own:
            writer.close().raise_for_failures()
        return written


@torch.inference_mode()
def evaluate(detector: AnomalyDetector, dataset: Dataset, batch_size: int = 8, num_workers: int = 2,
             metrics: str = "image-pixel-level", aupro: str = "compat", precision: str = "auto",
             save_predictions: Optional[str | Path] = None, visualize: Optional[str | Path] = None,
             progress: bool = True, references: Optional[MemoryBank] = None,
             reference_weight: float = 0.5, writer: Optional[OutputWriter] = None,
             overlay_format: str = "jpg") -> MetricsReport:
    """Run ``detector`` over ``dataset`` in batches and compute per-class metrics; with a memory
    bank of normal ``references``, predictions are fused with it (see :mod:`.references`).

    Predictions stay on the device until they are handed to the metric accumulator, which keeps
    one compact host copy per class (see :class:`anomaly_clip.metrics.AnomalyEvaluator`). The
    report of a random (untrained) backbone carries a caveat that every table repeats.
    Under ``torchrun`` each process scores a contiguous share of whole batches (the very batches
    a single process would form) and the metrics come out of :func:`gather_report`; every
    process returns the same report, equal to a single process's.

    Optional files: ``save_predictions`` (one ``.npz`` per class, written once the metrics are
    computed) and ``visualize`` (one panel per image, :class:`~anomaly_clip.engine.outputs.EvaluationPanels`,
    in ``overlay_format``) go through ``writer`` (default: one of evaluate's own, closed at the
    end). A file that cannot be written is reported by name and never costs the metrics: pass a
    ``writer`` and call ``writer.close().raise_for_failures()`` after saving the results.
    """
    if metrics not in METRIC_LEVELS:
        raise ValueError(f"metrics must be one of {METRIC_LEVELS}, got {metrics!r}")
    has_masks = getattr(dataset, "has_masks", True) is not False
    if metrics != "image-level" and not has_masks:
        logger.warning("The dataset has no masks (image-level only): reporting image-level metrics only")
        metrics = "image-level"
    fuses_scores = type(detector).class_image_scores is not AnomalyDetector.class_image_scores
    evaluator = AnomalyEvaluator(metrics=metrics, aupro=aupro,
                                 class_score_transform=detector.class_image_scores if fuses_scores else None)
    predictions = PredictionWriter(save_predictions) if save_predictions else None
    own_writer = writer is None and (save_predictions or visualize)
    writer = OutputWriter(writer_threads(detector.device)) if own_writer else writer
    panels = None
    if visualize:
        calibration = detector.calibration
        # the calibration decides on its method's per-image score; fused with references the scale differs
        decides = calibration is not None and calibration.image_threshold is not None and references is None
        panels = EvaluationPanels(
            visualize, writer, ColourScale(calibration.map_range if calibration is not None else None),
            has_masks=has_masks, image_threshold=calibration.image_threshold if decides else None,
            decision_scores=(lambda output: calibration.image_scores(detector, output.scores, output.map_peaks,
                                                                     output.map_floors)) if decides else None,
            pixel_threshold=calibration.pixel_threshold if calibration is not None else None,
            overlay_format=overlay_format, random_weights=detector.backbone.config.random_init)
    scorer = None
    if references is not None:
        scorer = partial(predict_with_references, detector, bank=references, weight=reference_weight)
    for output in iterate_batches(detector, shard_dataset(dataset, block=batch_size), batch_size=batch_size,
                                  num_workers=num_workers, precision=precision, scorer=scorer, progress=progress,
                                  desc="evaluate", pin_memory=detector.device.type == "cuda"):
        evaluator.update(output.class_names, output.labels, output.scores, output.maps, output.masks,
                         map_peaks=output.map_peaks, map_floors=output.map_floors)
        if predictions is not None:
            predictions.add(output.class_names, output.paths, output.labels, output.scores, output.maps)
        if panels is not None:
            panels(output)
    report = gather_report(evaluator)
    if detector.backbone.config.random_init:
        report.caveat = RANDOM_WEIGHTS_WARNING
    if predictions is not None:
        predictions.write(writer)
    if own_writer:
        summary = writer.close()
        if summary.failures:
            logger.warning("%d output file(s) could not be written (named above); the metrics are complete",
                           len(summary.failures))
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
