"""Pictures of anomaly maps: JET heatmaps blended over the image, side-by-side panels for
evaluation (image | ground truth | map) and for one's own images (image | map | predicted mask
outline, under a caption). Images are read with the datasets' reader, never re-decoded otherwise."""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.dataset import ImageTransform
from ..data.imaging import read_rgb


def safe_name(name: str) -> str:
    """``name`` with every character but letters, digits and ``-_.`` replaced by ``_`` (file names)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def colourize(anomaly_map: np.ndarray, value_range: Optional[Tuple[float, float]] = None) -> np.ndarray:
    """(H, W, 3) uint8 JET colours of a map: ``value_range`` fixes the scale shared by many images
    (values outside it saturate); without it the map is min-max scaled on its own."""
    low, high = value_range if value_range is not None else (float(anomaly_map.min()), float(anomaly_map.max()))
    span = high - low
    scaled = np.clip((anomaly_map - low) / span, 0.0, 1.0) if span > 0 else np.zeros_like(anomaly_map)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]


def blend(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Half image, half colour (both (H, W, 3) uint8)."""
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


def save_panel(panel: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB uint8 panel as PNG (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(panel)).save(path)
    return path


def write_visualizations(directory: Path, paths: List[str], class_names: List[str], masks: torch.Tensor,
                         maps: torch.Tensor) -> None:
    """One image | mask | map panel per image under ``directory/<class>/``: the image read as the
    datasets read it (:func:`~anomaly_clip.data.imaging.read_rgb`, any storage mode) and resized
    to the maps' size with the model's bicubic resize."""
    size = maps.shape[-1]
    transform = ImageTransform(size)
    for path, name, mask, anomaly_map in zip(paths, class_names, masks.cpu().numpy(), maps.float().cpu().numpy()):
        image = np.asarray(transform.resize(read_rgb(path)))
        panel = heatmap_overlay(image, mask.reshape(size, size), anomaly_map)
        save_panel(panel, directory / safe_name(name) / f"{safe_name(Path(path).parent.name)}_{Path(path).stem}.png")
