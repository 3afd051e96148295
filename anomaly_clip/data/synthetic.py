"""Synthetic anomaly dataset: procedural textures and objects with drawn defects and exact masks.

The demo and every end-to-end test run on it, so it is small (six classes of 128 px images, a few
dozen per class, written in about a second), deterministic (each image has its own seed derived
from the dataset seed, its class, split and index, so changing a count does not change the other
images) and exact: a defect changes every pixel of its mask by at least :data:`MIN_CHANGE` grey
levels in some channel and no pixel outside it, so the mask equals the set of pixels where the
image differs from its defect-free rendering.

Files follow the MVTec AD layout (``<class>/train/good``, ``<class>/test/good``,
``<class>/test/<defect>``, ``<class>/ground_truth/<defect>/<name>_mask.png``) with a
``meta.json``, so every loader reads it like a published dataset.
"""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from .formats import write_metadata
from .records import ANOMALOUS, NORMAL, Metadata, Sample

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES = ("fabric", "mesh", "marble", "washer", "tile", "pill")
DEFECT_TYPES = ("scratch", "blob", "crack", "missing", "stain")
DONOR_DEFECTS = ("cutpaste",)
MIN_CHANGE = 24
MARKER = "synthetic.json"
_SPLIT_CODES = {"train": 0, "test": 1}


@dataclass(frozen=True)
class Scene:
    """A defect-free image: the image, where defects may go, what shows through a hole, and
    optionally a ``donor`` image of the same kind that a cut-paste defect copies a patch from."""

    image: np.ndarray
    support: np.ndarray
    background: np.ndarray
    donor: Optional[np.ndarray] = None


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image, its defect mask (all False when normal) and its defect-free version."""

    image: np.ndarray
    mask: np.ndarray
    clean: np.ndarray
    defect: Optional[str]


def _grid(size: int, rng: np.random.Generator, angle_jitter: float) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates centred on a slightly shifted centre, rotated by a small random angle."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = size / 2 + rng.uniform(-0.03, 0.03, 2) * size
    angle = rng.uniform(-angle_jitter, angle_jitter)
    x, y = xs - centre[0], ys - centre[1]
    return x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)


def _smooth_noise(size: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """Zero-mean, unit-range low-frequency noise."""
    field = cv2.GaussianBlur(rng.standard_normal((size, size)), (0, 0), sigmaX=max(scale, 0.5))
    return field / (np.abs(field).max() + 1e-8)


def _colourise(intensity: np.ndarray, colour: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    tint = np.asarray(colour, dtype=np.float64) * rng.uniform(0.95, 1.05, 3)
    return intensity[..., None] * tint


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sensor noise and 8-bit quantisation."""
    noise = rng.standard_normal(image.shape, dtype=np.float32) * 3.0
    return np.clip(np.rint(image + noise), 0, 255).astype(np.uint8)


def _hole(size: int, rng: np.random.Generator) -> np.ndarray:
    return _finish(np.full((size, size, 3), rng.uniform(10, 30)), rng)


def _fabric(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, 0.08)
    period = rng.uniform(6.0, 8.0)
    weave = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
    intensity = 0.7 + 0.25 * weave + 0.05 * _smooth_noise(size, rng, size / 10)
    image = _finish(_colourise(intensity, (70, 110, 190), rng), rng)
    return Scene(image, np.ones((size, size), bool), _hole(size, rng))


def _mesh(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, 0.05)
    period = rng.uniform(11.0, 14.0)
    distance = np.minimum(np.abs((u / period) % 1.0 - 0.5), np.abs((v / period) % 1.0 - 0.5)) * period
    wire = np.clip(1.6 - distance / 1.2, 0.0, 1.0)
    intensity = 0.25 + 0.65 * wire
    image = _finish(_colourise(intensity, (200, 200, 190), rng), rng)
    return Scene(image, np.ones((size, size), bool), _hole(size, rng))


def _marble(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, np.pi)
    turbulence = _smooth_noise(size, rng, size / 12)
    veins = np.abs(np.sin(2 * np.pi * u / (size * 0.35) + 5.0 * turbulence)) ** 0.35
    intensity = 0.55 + 0.4 * veins + 0.05 * _smooth_noise(size, rng, 2.0)
    image = _finish(_colourise(intensity, (235, 225, 205), rng), rng)
    return Scene(image, np.ones((size, size), bool), _hole(size, rng))


def _backdrop(size: int, rng: np.random.Generator, colour: Sequence[float]) -> np.ndarray:
    _, v = _grid(size, rng, 0.0)
    gradient = 0.85 + 0.15 * v / size
    return _colourise(gradient, colour, rng)


def _place(backdrop: np.ndarray, body: np.ndarray, support: np.ndarray, rng: np.random.Generator) -> Scene:
    """An object (``body`` where ``support``) on a backdrop, which also shows through holes."""
    background = _finish(backdrop, rng)
    image = np.where(support[..., None], _finish(body, rng), background)
    return Scene(image, support, background)


def _washer(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, np.pi)
    radius = np.hypot(u, v)
    outer, inner = size * rng.uniform(0.34, 0.38), size * rng.uniform(0.15, 0.18)
    support = (radius <= outer) & (radius >= inner)
    shading = 0.7 + 0.25 * np.cos(np.arctan2(v, u) - rng.uniform(0, 2 * np.pi))
    return _place(_backdrop(size, rng, (45, 45, 55)), _colourise(shading, (185, 185, 195), rng), support, rng)


def _tile(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, 0.12)
    half, corner = size * rng.uniform(0.36, 0.4), size * 0.08
    qx, qy = np.abs(u) - (half - corner), np.abs(v) - (half - corner)
    box = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0) <= corner
    offset, hole = size * 0.2, size * 0.05
    holes = np.zeros_like(box)
    for sx in (-1, 1):
        for sy in (-1, 1):
            holes |= np.hypot(u - sx * offset, v - sy * offset) <= hole
    support = box & ~holes
    speckle = 0.8 + 0.1 * _smooth_noise(size, rng, 1.5)
    return _place(_backdrop(size, rng, (40, 60, 110)), _colourise(speckle, (215, 210, 200), rng), support, rng)


def _pill(size: int, rng: np.random.Generator) -> Scene:
    u, v = _grid(size, rng, 0.2)
    half, radius = size * rng.uniform(0.26, 0.3), size * rng.uniform(0.13, 0.15)
    support = np.hypot(np.maximum(np.abs(u) - half, 0), v) <= radius
    shading = 0.75 + 0.25 * np.clip(1 - (v / radius) ** 2, 0, 1)
    halves = np.where((u < 0)[..., None], np.array([235.0, 235.0, 230.0]), np.array([230.0, 120.0, 40.0]))
    body = shading[..., None] * halves * rng.uniform(0.95, 1.05, 3)
    return _place(_backdrop(size, rng, (170, 185, 200)), body, support, rng)


RENDERERS: Dict[str, Callable[[int, np.random.Generator], Scene]] = {
    "fabric": _fabric, "mesh": _mesh, "marble": _marble, "washer": _washer, "tile": _tile, "pill": _pill,
}


def _random_point(region: np.ndarray, rng: np.random.Generator) -> Tuple[int, int]:
    ys, xs = np.nonzero(region)
    index = rng.integers(len(ys))
    return int(xs[index]), int(ys[index])


def _irregular_polygon(centre: Tuple[int, int], radius: float, rng: np.random.Generator) -> np.ndarray:
    count = 12
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radii = radius * rng.uniform(0.6, 1.3, count)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)
    return np.rint(points).astype(np.int32)


def _walk(start: Tuple[int, int], steps: int, step: float, turn: float, rng: np.random.Generator) -> np.ndarray:
    heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-turn, turn, steps))
    offsets = np.cumsum(np.stack([np.cos(heading), np.sin(heading)], axis=1) * step, axis=0)
    return np.rint(np.vstack([start, np.asarray(start) + offsets])).astype(np.int32)


def _line_thickness(size: int, rng: np.random.Generator) -> int:
    """1-2 px at the generator's 128 px, proportionally thicker on larger images."""
    return int(rng.integers(1, 3)) * max(1, round(size / 128))


def _defect_region(kind: str, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Boolean region of one defect (before clipping to the object)."""
    size = scene.image.shape[0]
    canvas = np.zeros((size, size), np.uint8)
    if kind == "missing" and not scene.support.all():
        edge = scene.support & ~cv2.erode(scene.support.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        centre = _random_point(edge, rng)
    else:
        centre = _random_point(scene.support, rng)
    if kind == "scratch":
        points = _walk(centre, 2, size * rng.uniform(0.12, 0.22), 0.3, rng)
        cv2.polylines(canvas, [points], False, 1, thickness=_line_thickness(size, rng), lineType=cv2.LINE_8)
    elif kind == "crack":
        points = _walk(centre, int(rng.integers(8, 14)), size * rng.uniform(0.025, 0.04), 0.7, rng)
        cv2.polylines(canvas, [points], False, 1, thickness=_line_thickness(size, rng), lineType=cv2.LINE_8)
    elif kind in ("blob", "missing"):
        radius = size * (rng.uniform(0.05, 0.1) if kind == "blob" else rng.uniform(0.08, 0.13))
        cv2.fillPoly(canvas, [_irregular_polygon(centre, radius, rng)], 1, lineType=cv2.LINE_8)
    elif kind == "stain":
        axes = (int(size * rng.uniform(0.06, 0.12)), int(size * rng.uniform(0.04, 0.08)))
        cv2.ellipse(canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1, lineType=cv2.LINE_8)
    elif kind == "cutpaste":
        sides = (size * rng.uniform(0.1, 0.25), size * rng.uniform(0.05, 0.2))
        corners = cv2.boxPoints((centre, sides, float(rng.uniform(0, 180))))
        cv2.fillPoly(canvas, [np.rint(corners).astype(np.int32)], 1, lineType=cv2.LINE_8)
    else:
        raise ValueError(f"unknown defect {kind!r}; known: {DEFECT_TYPES + DONOR_DEFECTS}")
    return canvas.astype(bool)


def _defect_pixels(kind: str, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """What the defect looks like everywhere (only its region is used)."""
    clean = scene.image.astype(np.float64)
    size = clean.shape[0]
    if kind == "scratch":
        return clean + (90.0 if rng.random() < 0.5 else -90.0)
    if kind == "crack":
        return clean * 0.25
    if kind == "blob":
        colour = rng.uniform(0, 255, 3)
        return np.broadcast_to(colour, clean.shape) + rng.normal(0, 4, clean.shape)
    if kind == "stain":
        return 0.45 * clean + 0.55 * rng.uniform(0, 255, 3)
    if kind == "cutpaste":
        # The donor moved by a random shift (a patch from elsewhere), flipped half of the time.
        donor = scene.donor[:, ::-1] if rng.random() < 0.5 else scene.donor
        shift = tuple(int(v) for v in rng.integers(0, size, 2))
        return np.roll(donor, shift, axis=(0, 1)).astype(np.float64)
    return scene.background.astype(np.float64)


def _force_change(clean: np.ndarray, changed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Push mask pixels that barely changed by :data:`MIN_CHANGE`, away from saturation."""
    result = np.clip(np.rint(changed), 0, 255).astype(np.int16)
    base = clean.astype(np.int16)
    weak = mask & (np.abs(result - base).max(axis=-1) < MIN_CHANGE)
    direction = np.where(base.mean(axis=-1, keepdims=True) > 127, -MIN_CHANGE, MIN_CHANGE)
    pushed = np.clip(base + direction, 0, 255)
    result = np.where(weak[..., None], pushed, result)
    return np.where(mask[..., None], result, base).astype(np.uint8)


def add_defect(scene: Scene, kind: str, rng: np.random.Generator,
               min_fraction: float = 0.002) -> Tuple[np.ndarray, np.ndarray]:
    """``(image, mask)``: ``scene`` with one defect of ``kind`` on its object; ``mask`` is exactly
    the set of changed pixels and covers at least ``min_fraction`` of the image. A ``cutpaste``
    defect needs ``scene.donor``."""
    if kind in DONOR_DEFECTS and scene.donor is None:
        raise ValueError(f"a {kind} defect copies from a donor image; the scene has none")
    size = scene.image.shape[0]
    minimum = max(3, int(min_fraction * size * size))
    for _ in range(50):
        mask = _defect_region(kind, scene, rng) & scene.support
        if mask.sum() >= minimum:
            break
    else:
        raise RuntimeError(f"could not place a {kind} defect covering {minimum} pixels")
    image = _force_change(scene.image, _defect_pixels(kind, scene, rng), mask)
    return image, mask


def image_rng(seed: int, class_name: str, split: str, defect: Optional[str], index: int) -> np.random.Generator:
    """The generator of one image: independent of the counts and of the other classes."""
    class_code = SYNTHETIC_CLASSES.index(class_name)
    defect_code = 0 if defect is None else 1 + DEFECT_TYPES.index(defect)
    return np.random.default_rng([seed, class_code, _SPLIT_CODES[split], defect_code, index])


def make_sample(class_name: str, defect: Optional[str], image_size: int, rng: np.random.Generator) -> SyntheticSample:
    """One rendered image of ``class_name``, with a ``defect`` (a :data:`DEFECT_TYPES` entry) or
    without (None); ``clean`` is the same image before the defect."""
    if class_name not in RENDERERS:
        raise ValueError(f"unknown synthetic class {class_name!r}; known: {SYNTHETIC_CLASSES}")
    scene = RENDERERS[class_name](image_size, rng)
    if defect is None:
        return SyntheticSample(scene.image, np.zeros(scene.support.shape, bool), scene.image, None)
    image, mask = add_defect(scene, defect, rng)
    return SyntheticSample(image, mask, scene.image, defect)


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = array[..., ::-1] if array.ndim == 3 else array
    if not cv2.imwrite(str(path), np.ascontiguousarray(data)):
        raise OSError(f"could not write {path}")


def _prepare_root(root: Path, classes: Sequence[str], overwrite: bool) -> None:
    marker = root / MARKER
    previous = json.loads(marker.read_text())["classes"] if marker.is_file() else []
    for name in set(classes) | set(previous):
        folder = root / name
        if not folder.exists():
            continue
        if name in previous or overwrite:
            shutil.rmtree(folder)
        else:
            raise FileExistsError(f"{folder} exists and was not written by the synthetic generator; "
                                  f"choose another root or pass overwrite=True (--overwrite)")


def generate_synthetic_dataset(root: Union[str, Path], classes: Optional[Sequence[str]] = None, n_train: int = 16,
                               n_test_normal: int = 10, n_test_anomalous: int = 15, image_size: int = 128,
                               seed: int = 0, fmt: str = "meta", overwrite: bool = False) -> str:
    """Write the synthetic dataset under ``root`` and return ``root``.

    Anomalous test images cycle through :data:`DEFECT_TYPES`. A root written before by this
    generator is replaced; other existing class folders are only replaced with ``overwrite``.
    """
    classes = list(classes or SYNTHETIC_CLASSES)
    unknown = [name for name in classes if name not in RENDERERS]
    if unknown:
        raise ValueError(f"unknown synthetic classes {unknown}; known: {SYNTHETIC_CLASSES}")
    if min(n_train, n_test_normal, n_test_anomalous) < 0 or n_test_normal + n_test_anomalous == 0:
        raise ValueError("counts must be non-negative and the test split must have images")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _prepare_root(root, classes, overwrite)
    metadata: Metadata = {"train": [], "test": []}
    plan = [("train", None, i) for i in range(n_train)] + [("test", None, i) for i in range(n_test_normal)]
    plan += [("test", DEFECT_TYPES[i % len(DEFECT_TYPES)], i // len(DEFECT_TYPES)) for i in range(n_test_anomalous)]
    for name in classes:
        for split, defect, index in plan:
            sample = make_sample(name, defect, image_size, image_rng(seed, name, split, defect, index))
            state = defect or "good"
            image_path = f"{name}/{split}/{state}/{index:03d}.png"
            _write_png(root / image_path, sample.image)
            mask_path = None
            if defect is not None:
                mask_path = f"{name}/ground_truth/{defect}/{index:03d}_mask.png"
                _write_png(root / mask_path, sample.mask.astype(np.uint8) * 255)
            metadata[split].append(Sample(image_path, ANOMALOUS if defect else NORMAL, name, mask_path, state))
    order = {name: position for position, name in enumerate(classes)}
    metadata = {split: sorted(samples, key=lambda s: (order[s.class_name], s.label, s.specie_name, s.image_path))
                for split, samples in metadata.items() if samples}
    write_metadata(metadata, root, fmt)
    settings = {"classes": classes, "n_train": n_train, "n_test_normal": n_test_normal,
                "n_test_anomalous": n_test_anomalous, "image_size": image_size, "seed": seed}
    (root / MARKER).write_text(json.dumps(settings, indent=2) + "\n")
    logger.info("Wrote synthetic dataset to %s: %d classes, %d train and %d test images", root, len(classes),
                len(metadata.get("train", [])), len(metadata["test"]))
    return str(root)
