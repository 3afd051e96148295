"""The files ``anomaly-clip predict`` writes: ``predictions.csv``, maps at the original
resolution (``.npz`` or 16-bit PNG) and overlay panels on a shared colour scale. Each file is
written all or nothing (:mod:`anomaly_clip.files`): a full disk never leaves a truncated file
under its final name."""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..files import atomic_path
from .config import MAP_FORMATS
from .inference import ImagePrediction
from .visualization import prediction_panel, save_panel

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "score", "label", "error")


def write_predictions_csv(rows: Sequence[ImagePrediction], path: str | os.PathLike) -> Path:
    """``path,score,label,error``: label 0/1 or empty when no threshold is known, score empty for
    skipped files."""
    path = Path(path)
    with atomic_path(path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.path, "" if row.score is None else f"{row.score:.9g}",
                             "" if row.label is None else row.label, row.error])
    return path


def read_predictions_csv(path: str | os.PathLike) -> List[ImagePrediction]:
    with Path(path).open(newline="") as handle:
        return [ImagePrediction(row["path"], score=float(row["score"]) if row["score"] else None,
                                label=int(row["label"]) if row["label"] else None, error=row["error"])
                for row in csv.DictReader(handle)]


def output_name(path: str | os.PathLike, root: Path) -> Path:
    """Relative name of an input's output files: its path under ``root`` with its suffix kept
    (``sub/a.jpg`` -> ``sub/a.jpg.png``), so files of one stem never collide."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root)
    except ValueError:
        return Path(resolved.name)


def common_root(paths: Sequence[str | os.PathLike]) -> Path:
    """The deepest folder holding all ``paths`` (names of outputs are relative to it)."""
    folders = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


PNG16_LOW, PNG16_HIGH = "anomaly_clip.low", "anomaly_clip.high"


def write_map_png16(anomaly_map: np.ndarray, path: str | os.PathLike) -> None:
    """Store a float map as a 16-bit PNG scaled over its own min..max; the two values are kept in
    the PNG's text chunks so :func:`read_map_png16` restores the map (to 1/65535 of its range)."""
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    span = high - low
    scaled = (anomaly_map - low) / span if span > 0 else np.zeros_like(anomaly_map)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG16_LOW, repr(low))
    info.add_text(PNG16_HIGH, repr(high))
    image = Image.fromarray(np.rint(scaled * 65535).astype(np.uint16))
    image.save(path, pnginfo=info)


def read_map_png16(path: str | os.PathLike) -> np.ndarray:
    """The float32 map of a :func:`write_map_png16` file."""
    with Image.open(path) as image:
        low, high = float(image.text[PNG16_LOW]), float(image.text[PNG16_HIGH])
        values = np.asarray(image, dtype=np.float64)
    return (low + values / 65535.0 * (high - low)).astype(np.float32)


class PredictionFiles:
    """The per-image files of a predict run (a :data:`MapSink`): maps at original resolution
    (``npz``: float32 ``map`` and ``score``; ``png16``) under ``maps/``, and overlay panels
    under ``overlays/``, named after each input's path below ``root``.

    Overlays share one colour scale: ``value_range`` (``--map_range``, else the calibration's map
    range), or, when there is none, the range of the first map written (logged, so the run's
    images stay comparable with each other).
    """

    def __init__(self, directory: str | os.PathLike, root: Path, save_maps: Optional[str] = None,
                 overlays: bool = False, image_threshold: Optional[float] = None,
                 pixel_threshold: Optional[float] = None, value_range: Optional[Tuple[float, float]] = None):
        if save_maps is not None and save_maps not in MAP_FORMATS:
            raise ValueError(f"save_maps must be one of {MAP_FORMATS}, got {save_maps!r}")
        self.directory = Path(directory)
        self.root = root
        self.save_maps = save_maps
        self.overlays = overlays
        self.image_threshold = image_threshold
        self.pixel_threshold = pixel_threshold
        self.value_range = value_range

    @property
    def needs_originals(self) -> bool:
        return self.overlays

    def target(self, kind: str, path: str, suffix: str) -> Path:
        name = output_name(path, self.root)
        target = self.directory / kind / name.with_name(name.name + suffix)
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def caption(self, row: ImagePrediction) -> str:
        if self.image_threshold is None:
            decision = "no image threshold"
        else:
            decision = f"{'ANOMALOUS' if row.label else 'normal'} (threshold {self.image_threshold:.4g})"
        low, high = self.value_range
        return f"score {row.score:.4g} | {decision} | colour scale {low:.3g}..{high:.3g}"

    def __call__(self, row: ImagePrediction, anomaly_map: torch.Tensor, original: Optional[np.ndarray]) -> None:
        values = anomaly_map.float().cpu().numpy()
        if self.save_maps == "npz":
            with atomic_path(self.target("maps", row.path, ".npz")) as temporary:
                np.savez_compressed(temporary, map=values, score=np.float32(row.score))
        elif self.save_maps == "png16":
            with atomic_path(self.target("maps", row.path, ".png")) as temporary:
                write_map_png16(values, temporary)
        if self.overlays:
            if original is None:
                raise ValueError("overlays need the original images (predict_files(..., keep_originals=True))")
            if self.value_range is None:
                low, high = float(values.min()), float(values.max())
                self.value_range = (low, high if high > low else low + 1.0)
                logger.warning("No calibrated map range: the overlays' colour scale is %.4g..%.4g (the first "
                               "image's); calibrate the model for a fixed scale", *self.value_range)
            mask = values >= self.pixel_threshold if self.pixel_threshold is not None else None
            panel = prediction_panel(original, values, self.value_range, mask, self.caption(row))
            with atomic_path(self.target("overlays", row.path, ".png")) as temporary:
                save_panel(panel, temporary)
