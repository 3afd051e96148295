"""One inference path: every consumer of a detector's outputs reads :func:`iterate_batches`.

:func:`iterate_batches` runs a detector over a dataset (an
:class:`~anomaly_clip.data.dataset.AnomalyDataset` or :class:`ImageFiles`) in batches, under the
chosen precision, and yields one :class:`BatchOutput` per batch: paths, class names, labels,
masks, scores, maps at model size (their maxima and minima computed once), and on request maps at
each image's original size, the original images and the patch features. Evaluation
(:mod:`.evaluation`), calibration (:func:`collect_outputs`), prediction on files (:func:`predict_files`,
:class:`Inferencer`) and the normal-reference memory bank (:mod:`.references`) all consume it.

Every image is read with :func:`anomaly_clip.data.imaging.read_rgb` and preprocessed with the
methods' own transform; an unreadable file of a file list becomes a row with an error instead
of stopping the run. The files a predict run writes (CSV, maps, overlays) are in :mod:`.outputs`.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.dataset import ImageTransform
from ..data.imaging import IMAGE_SUFFIXES, UnreadableImageError, read_rgb
from ..data.layouts import is_mask_folder
from .calibration import Calibration, CalibrationOutputs, Decision, decide
from .detector import AnomalyDetector, PatchFeatures, Prediction
from .distributed import is_main_process
from .precision import autocast

logger = logging.getLogger(__name__)

_GLOB_CHARACTERS = frozenset("*?[")

BatchScorer = Callable[[torch.Tensor, Optional[List[str]]], Prediction]
"""``(images, class names) -> Prediction``: the detector's forward, or one fused with normal references."""


def looks_like_a_mask(path: Path) -> bool:
    """Whether an input file is probably a dataset's mask: inside a mask folder
    (:data:`~anomaly_clip.data.layouts.MASK_FOLDER_NAMES`) or named ``*_mask``."""
    return path.stem.lower().endswith("_mask") or any(is_mask_folder(part) for part in path.parent.parts)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> List[Path]:
    """Image files named by ``inputs``: files as given, folders searched recursively for image
    suffixes, glob patterns (``**`` included) expanded; sorted within each input, duplicates
    (also one file named by two paths) dropped. A path that does not exist, or a folder/pattern
    without images, is an error; files that look like masks (:func:`looks_like_a_mask`, e.g. a
    dataset folder given whole) are kept and warned about."""
    found: Dict[Path, Path] = {}
    for item in inputs:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif _GLOB_CHARACTERS & set(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        else:
            raise FileNotFoundError(f"input not found: {text}")
        if not matches:
            raise FileNotFoundError(f"no image files in {text} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        for match in matches:
            found.setdefault(match.resolve(), match)
    masks = [path for path in found.values() if looks_like_a_mask(path)]
    if masks:
        logger.warning("%d of the %d input files look like masks (in a mask folder or named *_mask), e.g. %s: they "
                       "are scored as images; give the image folders only", len(masks), len(found), masks[0])
    return list(found.values())


class ImageFiles(Dataset):
    """Image files as model inputs, with their original size; a file that cannot be read gives
    its error message instead of an image (and, with ``keep_originals``, the 8-bit RGB array)."""

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int, high_bit_depth: str = "range",
                 class_names: Optional[Sequence[Optional[str]]] = None, keep_originals: bool = False):
        if class_names is not None and len(class_names) != len(paths):
            raise ValueError(f"{len(class_names)} class names for {len(paths)} images")
        self.paths = [str(p) for p in paths]
        self.class_names = list(class_names) if class_names is not None else [None] * len(self.paths)
        self.transform = ImageTransform(image_size, high_bit_depth)
        self.high_bit_depth = high_bit_depth
        self.keep_originals = keep_originals

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        path = self.paths[index]
        item: Dict[str, Any] = {"path": path, "class_name": self.class_names[index], "image": None, "size": None,
                                "original": None, "error": ""}
        try:
            image = read_rgb(path, self.high_bit_depth)
        except UnreadableImageError as error:
            item["error"] = str(error)
            return item
        item["image"] = self.transform(image)
        item["size"] = (image.height, image.width)
        if self.keep_originals:
            item["original"] = np.asarray(image)
        return item


def collate_items(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One batch of dataset items: readable ones stacked (``image``, ``label``, ``mask``), lists
    of the rest; items with an ``error`` are set apart under ``failed`` as (path, message)."""
    readable = [item for item in items if not item.get("error")]
    batch: Dict[str, Any] = {"failed": [(item["path"], item["error"]) for item in items if item.get("error")],
                             "order": [item["path"] for item in items]}
    for key in ("image", "label", "mask"):
        if readable and torch.is_tensor(readable[0].get(key)):
            batch[key] = torch.stack([item[key] for item in readable])
    for key in ("path", "class_name", "size", "original"):
        batch[key] = [item.get(key) for item in readable]
    return batch


@dataclass
class BatchOutput:
    """Everything one batch produced, for any consumer (see the module docstring).

    ``scores`` (B,) and ``maps`` (B, S, S) float32 on the detector's device (None when only
    patch features were asked for), ``map_peaks`` / ``map_floors`` (B,) their per-map maximum and
    minimum; ``labels`` (B,) int64 and ``masks`` (B, S, S) bool when the dataset has them;
    ``original_maps``: (H_i, W_i) maps at each image's size; ``failed``: (path, error) of the
    batch's unreadable files; ``order``: every path of the batch, failed ones included.
    """

    paths: List[str]
    class_names: List[Optional[str]]
    scores: Optional[torch.Tensor] = None
    maps: Optional[torch.Tensor] = None
    map_peaks: Optional[torch.Tensor] = None
    map_floors: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    masks: Optional[torch.Tensor] = None
    sizes: List[Optional[Tuple[int, int]]] = field(default_factory=list)
    original_maps: Optional[List[torch.Tensor]] = None
    originals: List[Optional[np.ndarray]] = field(default_factory=list)
    patch_features: Optional[PatchFeatures] = None
    failed: List[Tuple[str, str]] = field(default_factory=list)
    order: List[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def upsample_to_sizes(maps: torch.Tensor, sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """Each (S, S) map bilinearly resized to its image's (H, W), on the maps' device; images of
    one size are resized together."""
    resized: List[Optional[torch.Tensor]] = [None] * len(sizes)
    by_size: Dict[Tuple[int, int], List[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(index)
    for size, indices in by_size.items():
        chosen = maps[indices].unsqueeze(1)
        if tuple(chosen.shape[-2:]) != size:
            chosen = F.interpolate(chosen, size=size, mode="bilinear", align_corners=False)
        for index, single in zip(indices, chosen[:, 0]):
            resized[index] = single
    return resized  # type: ignore[return-value]


@torch.inference_mode()
def iterate_batches(detector: AnomalyDetector, dataset: Dataset, batch_size: int = 8, num_workers: int = 0,
                    precision: str = "auto", scorer: Optional[BatchScorer] = None,
                    class_name: Optional[str] = None, original_size: bool = False,
                    reference_features_only: bool = False, progress: bool = False, desc: str = "predict",
                    pin_memory: bool = False) -> Iterator[BatchOutput]:
    """Run ``detector`` over ``dataset`` in order and yield one :class:`BatchOutput` per batch.

    ``scorer`` replaces ``detector.forward`` (e.g. a prediction fused with normal references,
    :func:`anomaly_clip.engine.references.predict_with_references`); ``class_name`` replaces the
    dataset's class names; ``original_size`` adds maps at each image's own size (datasets of
    files know it); ``reference_features_only`` yields, instead of scores and maps, the features a
    memory bank of normal references stores (:meth:`AnomalyDetector.reference_features`).
    Under ``torchrun`` pass this process's shard of the data (the caller knows how it splits).
    """
    detector.eval()
    device = detector.device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_items, pin_memory=pin_memory)
    forward = scorer or detector
    # one iterator, handed to tqdm: tqdm.auto's wrapper calls iter() on what it is given and then
    # again when iterated, and each iter() of a DataLoader starts its own workers, which decoded
    # the first batches a second time (and warned twice about an animated GIF)
    batches = iter(loader)
    total = len(loader) if hasattr(dataset, "__len__") else None
    for batch in tqdm(batches, total=total, desc=desc, disable=not (progress and is_main_process()),
                      dynamic_ncols=True, leave=False):
        names = [class_name] * len(batch["path"]) if class_name else list(batch["class_name"])
        output = BatchOutput(paths=list(batch["path"]), class_names=names, sizes=list(batch["size"]),
                             originals=list(batch["original"]), failed=batch["failed"], order=batch["order"])
        if not output.paths:
            yield output
            continue
        images = batch["image"].to(device, non_blocking=True)
        if "label" in batch:
            output.labels = batch["label"].to(device)
        if "mask" in batch:
            output.masks = batch["mask"].to(device).reshape(images.shape[0], *images.shape[-2:]) > 0.5
        with autocast(device, precision):
            if reference_features_only:
                output.patch_features = detector.reference_features(images)
            else:
                prediction = forward(images, None if all(n is None for n in names) else names)
        if not reference_features_only:
            output.scores, output.maps = prediction.scores.float(), prediction.maps.float()
            output.map_peaks, output.map_floors = output.maps.amax(dim=(-2, -1)), output.maps.amin(dim=(-2, -1))
            if original_size:
                output.original_maps = upsample_to_sizes(output.maps, output.sizes)
        yield output


def collect_outputs(detector: AnomalyDetector, dataset: Dataset, batch_size: int = 8, num_workers: int = 0,
                    precision: str = "auto", class_name: Optional[str] = None, keep_maps: bool = True,
                    progress: bool = True, scorer: Optional[BatchScorer] = None) -> CalibrationOutputs:
    """Run ``detector`` (or ``scorer``, e.g. fused with normal references) over an
    :class:`~anomaly_clip.data.dataset.AnomalyDataset`; ``class_name`` replaces the dataset's
    class names (predict then uses it by default). The maps are kept on the host only with
    ``keep_maps`` (pixel F1-max needs them, quantiles need only their maxima)."""
    has_masks = keep_maps and getattr(dataset, "has_masks", False)
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in ("scores", "peaks", "floors", "labels", "maps", "masks")}
    names: List[str] = []
    for output in iterate_batches(detector, dataset, batch_size=batch_size, num_workers=num_workers,
                                  precision=precision, class_name=class_name, progress=progress, desc="calibrate",
                                  scorer=scorer):
        parts["scores"].append(output.scores)
        parts["peaks"].append(output.map_peaks)
        parts["floors"].append(output.map_floors)
        parts["labels"].append(output.labels.bool())
        if keep_maps:
            parts["maps"].append(output.maps.cpu())
        if has_masks:
            parts["masks"].append(output.masks.cpu())
        names += output.class_names
    return CalibrationOutputs(
        scores=torch.cat(parts["scores"]), map_peaks=torch.cat(parts["peaks"]), map_floors=torch.cat(parts["floors"]),
        labels=torch.cat(parts["labels"]), maps=torch.cat(parts["maps"]) if keep_maps else None,
        masks=torch.cat(parts["masks"]) if has_masks else None, class_names=sorted(set(names)))


@dataclass
class ImagePrediction:
    """One row of a prediction run: the per-image score and decision, or why the file was skipped.
    ``map`` holds the anomaly map only when asked for (at original or model resolution)."""

    path: str
    score: Optional[float] = None
    label: Optional[int] = None
    error: str = ""
    size: Optional[Tuple[int, int]] = None
    map: Optional[torch.Tensor] = None


MapSink = Callable[[ImagePrediction, torch.Tensor, Optional[np.ndarray]], None]


def predict_files(detector: AnomalyDetector, paths: Sequence[str | os.PathLike],
                  class_names: Optional[Sequence[Optional[str]]] = None, batch_size: int = 8, num_workers: int = 0,
                  precision: str = "auto", calibration: Any = None, original_size: bool = True,
                  keep_maps: bool = False, sink: Optional[MapSink] = None, keep_originals: bool = False,
                  high_bit_depth: str = "range", progress: bool = True,
                  scorer: Optional[BatchScorer] = None) -> List[ImagePrediction]:
    """Score ``paths`` in batches and return one row per path, in order.

    The score is the per-image score of ``calibration`` (a
    :class:`~anomaly_clip.engine.calibration.Calibration`, by default ``detector.calibration``;
    the raw score without one) and the label its decision when it has an image threshold. An
    image whose score or map holds NaN or infinity gets an error and no score or label. Maps
    are resized to each image's original size on the device (``original_size``) and handed to
    ``sink`` (with the original RGB array when ``keep_originals``) or kept in the rows
    (``keep_maps``). ``scorer`` as for :func:`iterate_batches`.
    """
    calibration = calibration if calibration is not None else detector.calibration
    post = calibration if calibration is not None else Calibration(method=detector.method_name)
    dataset = ImageFiles(paths, detector.image_size, high_bit_depth, class_names, keep_originals)
    rows: List[ImagePrediction] = []
    for output in iterate_batches(detector, dataset, batch_size=batch_size, num_workers=num_workers,
                                  precision=precision, scorer=scorer, original_size=original_size,
                                  progress=progress):
        by_path = {path: ImagePrediction(path, error=error) for path, error in output.failed}
        if output.paths:
            scores = post.image_scores(detector, output.scores, output.map_peaks, output.map_floors)
            finite = (torch.isfinite(scores) & torch.isfinite(output.map_peaks) & torch.isfinite(output.map_floors)).cpu()
            labels = post.decide_images(torch.where(finite.to(scores.device), scores, 0.0))
            maps = output.original_maps if original_size else list(output.maps)
            for index, (path, score, anomaly_map) in enumerate(zip(output.paths, scores.cpu().tolist(), maps)):
                if not finite[index]:
                    by_path[path] = ImagePrediction(path, error=f"the model's score or map is not finite ({score}): "
                                                                "no decision (a diverged model, or float16 overflow)")
                    continue
                label = int(labels[index]) if labels is not None else None
                row = ImagePrediction(path, score=score, label=label, size=output.sizes[index],
                                      map=anomaly_map if keep_maps else None)
                if sink is not None:
                    sink(row, anomaly_map, output.originals[index])
                by_path[path] = row
        rows += [by_path[path] for path in output.order]
    failed = sum(1 for row in rows if row.error)
    if failed:
        logger.warning("%d of %d files could not be read or scored and were skipped (see the error column)", failed,
                       len(rows))
    return rows


def raise_for_errors(rows: Sequence[ImagePrediction]) -> None:
    """Raise :class:`UnreadableImageError` naming every file that could not be read or scored."""
    errors = [row.error for row in rows if row.error]
    if errors:
        raise UnreadableImageError(f"{len(errors)} file(s) could not be read or scored:\n  " + "\n  ".join(errors))


class Inferencer:
    """Image files in, scores and maps out: a detector, its post-processor and the batching.

    ``calibration`` (default: the detector's, found beside its checkpoint) supplies the per-image
    score rule's statistics and the thresholds of :meth:`decide`; the detector never decides.
    """

    def __init__(self, detector: AnomalyDetector, calibration: Any = None, batch_size: int = 8,
                 num_workers: int = 0, precision: str = "fp32", high_bit_depth: str = "range"):
        self.detector = detector
        self.calibration = calibration if calibration is not None else detector.calibration
        self.batch_size, self.num_workers, self.precision = batch_size, num_workers, precision
        self.high_bit_depth = high_bit_depth

    def predict_paths(self, paths: Sequence[str | os.PathLike], class_names: Optional[Sequence[str]] = None,
                      original_size: bool = False) -> Prediction:
        """Score image files (any size, grayscale/RGBA/16-bit accepted) with the model's transform.

        Scores are the per-image decision scores (:meth:`AnomalyDetector.image_scores` with the
        calibration's statistics); maps are (N, S, S) at model resolution, or with
        ``original_size`` a list of maps at each image's own resolution. An unreadable file
        raises :class:`UnreadableImageError`, naming every such file.
        """
        rows = predict_files(self.detector, paths, class_names=class_names, batch_size=self.batch_size,
                             num_workers=self.num_workers, precision=self.precision, calibration=self.calibration,
                             original_size=original_size, keep_maps=True, high_bit_depth=self.high_bit_depth,
                             progress=False)
        raise_for_errors(rows)
        scores = torch.tensor([r.score for r in rows], dtype=torch.float32, device=self.detector.device)
        maps = [r.map for r in rows]
        return Prediction(scores=scores, maps=maps if original_size else torch.stack(maps))

    def decide(self, prediction: Prediction, image_threshold: Optional[float] = None,
               pixel_threshold: Optional[float] = None) -> Decision:
        """Labels and masks of ``prediction`` (see :meth:`Calibration.decide`); thresholds given
        here win over the calibration's."""
        calibration = self.calibration or Calibration(method=self.detector.method_name)
        return decide(prediction.scores, prediction.maps,
                      calibration.image_threshold if image_threshold is None else image_threshold,
                      calibration.pixel_threshold if pixel_threshold is None else pixel_threshold)
