"""Scoring one's own image files: input expansion, batched prediction, maps at the original
resolution, per-image decisions.

:func:`predict_files` is a function from a list of paths to a list of rows, so a run can be split
by rank (each rank scores its share, the rows are gathered, one CSV is written). Every image is
read with :func:`anomaly_clip.data.imaging.read_rgb` and preprocessed with the methods' own
transform; an unreadable file becomes a row with an error instead of stopping the run. The files
a run writes (CSV, maps, overlays) are in :mod:`anomaly_clip.engine.outputs`.
"""
from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.dataset import ImageTransform
from ..data.imaging import IMAGE_SUFFIXES, UnreadableImageError, read_rgb
from .precision import autocast

logger = logging.getLogger(__name__)

_GLOB_CHARACTERS = frozenset("*?[")


class Scorer(Protocol):
    """What prediction and calibration need of a model; every
    :class:`~anomaly_clip.engine.detector.AnomalyDetector` is one."""

    method_name: str
    calibration: Any
    backbone: Any

    @property
    def device(self) -> torch.device: ...

    @property
    def image_size(self) -> int: ...

    def eval(self) -> Any: ...

    def trainable_state_dict(self) -> Dict[str, Any]: ...

    def predict(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Any: ...

    def score_statistics(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                         map_floors: torch.Tensor) -> Dict[str, float]: ...

    def image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                     statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor: ...


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> List[Path]:
    """Image files named by ``inputs``: files as given, folders searched recursively for image
    suffixes, glob patterns (``**`` included) expanded; sorted within each input, duplicates
    dropped. A path that does not exist, or a folder/pattern without images, is an error."""
    found: Dict[Path, None] = {}
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
        found.update(dict.fromkeys(matches))
    return list(found)


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


def _keep_as_list(items: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return items


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


def _upsample(maps: torch.Tensor, sizes: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
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
def predict_files(detector: Scorer, paths: Sequence[str | os.PathLike],
                  class_names: Optional[Sequence[Optional[str]]] = None, batch_size: int = 8, num_workers: int = 0,
                  precision: str = "auto", calibration: Any = None, original_size: bool = True,
                  keep_maps: bool = False, sink: Optional[MapSink] = None, keep_originals: bool = False,
                  high_bit_depth: str = "range", progress: bool = True,
                  score_batch: Optional[Callable[[torch.Tensor, Optional[List[str]]], Any]] = None
                  ) -> List[ImagePrediction]:
    """Score ``paths`` in batches and return one row per path, in order.

    ``score_batch(images, class_names)`` replaces ``detector.predict`` (e.g. a prediction fused with
    few-shot normal references, :func:`anomaly_clip.engine.references.predict_with_references`).

    The score is the detector's per-image score (:meth:`AnomalyDetector.image_scores` with the
    statistics of ``calibration``, a :class:`~anomaly_clip.engine.calibration.Calibration`, by
    default ``detector.calibration``) and the label is
    ``score >= image_threshold`` when a threshold is known. Maps are resized to each image's
    original size on the device (``original_size``) and handed to ``sink`` (with the original
    RGB array when ``keep_originals``) or kept in the rows (``keep_maps``).
    """
    detector.eval()
    device = detector.device
    calibration = calibration if calibration is not None else detector.calibration
    statistics = calibration.score_statistics if calibration is not None else None
    image_threshold = calibration.image_threshold if calibration is not None else None
    dataset = ImageFiles(paths, detector.image_size, high_bit_depth, class_names, keep_originals)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_keep_as_list)
    rows: List[ImagePrediction] = []
    for items in tqdm(loader, desc="predict", disable=not progress, dynamic_ncols=True, leave=False):
        readable = [item for item in items if not item["error"]]
        rows_of_batch = {item["path"]: ImagePrediction(item["path"], error=item["error"]) for item in items
                         if item["error"]}
        if readable:
            images = torch.stack([item["image"] for item in readable]).to(device)
            names = [item["class_name"] for item in readable]
            with autocast(device, precision):
                prediction = (score_batch or detector.predict)(images, None if all(n is None for n in names) else names)
            maps = prediction.maps.float()
            scores = detector.image_scores(prediction.scores.float(), maps.amax(dim=(-2, -1)),
                                           maps.amin(dim=(-2, -1)), statistics).float()
            sizes = [item["size"] for item in readable]
            outputs = _upsample(maps, sizes) if original_size else list(maps)
            for item, score, anomaly_map in zip(readable, scores.cpu().tolist(), outputs):
                label = int(score >= image_threshold) if image_threshold is not None else None
                row = ImagePrediction(item["path"], score=score, label=label, size=item["size"],
                                      map=anomaly_map if keep_maps else None)
                if sink is not None:
                    sink(row, anomaly_map, item["original"])
                rows_of_batch[item["path"]] = row
        rows += [rows_of_batch[item["path"]] for item in items]
    failed = sum(1 for row in rows if row.error)
    if failed:
        logger.warning("%d of %d files could not be read and were skipped (see the error column)", failed, len(rows))
    return rows


def raise_for_errors(rows: Sequence[ImagePrediction]) -> None:
    """Raise :class:`UnreadableImageError` naming every file that could not be read."""
    errors = [row.error for row in rows if row.error]
    if errors:
        raise UnreadableImageError(f"{len(errors)} unreadable file(s):\n  " + "\n  ".join(errors))
