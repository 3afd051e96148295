"""Pictures of anomaly maps, one panel design for evaluation (``test.py --visualize``) and for
one's own images (``predict --overlays``)::

    <header: score, decision, class / label>
    image | anomaly map over the image | outlines: predicted mask (red), ground truth (green)
                   colour bar LOW ... HIGH (pixel threshold marked)
    <notes: random weights, how the colour scale was chosen, no pixel threshold, no mask>

Every column has a title, the colour bar names the range of the map colours, and what is
missing (a pixel threshold, a mask, a calibrated colour scale) is written on the picture. Maps
are coloured with OpenCV's JET colour map; text is drawn with Pillow's own font (FreeType when
available); images are read with :func:`anomaly_clip.data.imaging.read_rgb`, as datasets read
them. Images lower than :data:`PANEL_MIN_HEIGHT` are enlarged so that their text stays legible,
and no image column is longer than :data:`PANEL_MAX_SIDE` on either side (aspect ratio kept), so
the memory a panel takes is bounded whatever the image's shape (a 1 x 2000 px image once made a
1.5-million-px-wide panel) and every panel fits JPEG's 65535 px limit.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..data.dataset import ImageTransform
from ..data.imaging import read_rgb

logger = logging.getLogger(__name__)

PANEL_MIN_HEIGHT = 256
PANEL_MAX_SIDE = 4096
BACKGROUND = (24, 24, 24)
TEXT = (240, 240, 240)
WARNING_TEXT = (255, 190, 60)
PREDICTED_COLOUR = (255, 40, 40)
TRUTH_COLOUR = (40, 255, 80)
GAP = 4

RANDOM_WEIGHTS_NOTE = "RANDOM (untrained) CLIP weights: scores and maps are meaningless"
NO_PIXEL_THRESHOLD_NOTE = "no pixel threshold: no predicted mask (calibrate, or --pixel_threshold)"
NO_MASK_NOTE = "no mask: the dataset has no pixel annotation, so no ground truth is outlined"


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


@dataclass
class ColourScale:
    """The colour scale shared by the panels of one run: ``value_range`` as given (``--map_range``
    or a calibration's map range, named by ``source``), else fixed by the first map drawn, which
    every later panel then says (hotter images saturate)."""

    value_range: Optional[Tuple[float, float]] = None
    source: str = "calibration"

    def fix(self, anomaly_map: np.ndarray) -> Tuple[float, float]:
        """The range to colour ``anomaly_map`` with (fixed by it when none is set yet)."""
        if self.value_range is None:
            low, high = float(anomaly_map.min()), float(anomaly_map.max())
            self.value_range = (low, high if high > low else low + 1.0)
            self.source = "first image"
            logger.warning("No calibrated map range: the colour scale is %.4g..%.4g (the first image's); "
                           "calibrate the model or pass --map_range for a fixed scale", *self.value_range)
        return self.value_range

    @property
    def note(self) -> Optional[str]:
        if self.source != "first image":
            return None
        return "colour scale = the FIRST image's range (not calibrated): hotter maps saturate"


@dataclass
class PanelContent:
    """What one panel shows besides the image and its map.

    ``header``: lines above the columns (score, decision, label); ``predicted_mask`` / ``truth``:
    (H, W) bool masks outlined in red / green; ``annotated``: whether the image's dataset has
    masks (False: "no mask" is written; None: ground truth does not apply, as for one's own
    images); ``notes``: warnings written under the colour bar.
    """

    header: List[str]
    pixel_threshold: Optional[float] = None
    predicted_mask: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None
    annotated: Optional[bool] = None
    notes: List[str] = field(default_factory=list)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: ImageFont.ImageFont, width: int) -> List[str]:
    """``text`` broken at spaces into lines no wider than ``width`` pixels (a longer word stays whole)."""
    lines: List[str] = []
    for word in text.split(" "):
        if lines and ImageDraw.Draw(Image.new("L", (1, 1))).textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _column_size(height: int, width: int) -> Tuple[int, int]:
    """(height, width) of a panel's image column for an image of ``height`` x ``width`` px: scaled
    up to :data:`PANEL_MIN_HEIGHT` px high, and down so that neither side exceeds
    :data:`PANEL_MAX_SIDE` (the cap wins); aspect ratio kept, each side at least 1 px."""
    factor = min(max(1.0, PANEL_MIN_HEIGHT / height), PANEL_MAX_SIDE / max(height, width))
    if factor == 1.0:
        return height, width
    return max(1, min(PANEL_MAX_SIDE, round(height * factor))), max(1, min(PANEL_MAX_SIDE, round(width * factor)))


def _enlarge(image: np.ndarray, anomaly_map: np.ndarray, masks: Sequence[Optional[np.ndarray]]):
    """Image, map and masks resized together to the column size of :func:`_column_size`."""
    height, width = image.shape[:2]
    new_height, new_width = _column_size(height, width)
    if (new_height, new_width) == (height, width):
        return image, anomaly_map, list(masks)
    size = (new_width, new_height)
    shrink = new_height < height or new_width < width
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    anomaly_map = cv2.resize(anomaly_map.astype(np.float32), size,
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    masks = [None if m is None else cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
             for m in masks]
    return image, anomaly_map, masks


def _outline(image: np.ndarray, mask: np.ndarray, colour: Tuple[int, int, int], thickness: int) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, colour, thickness)


def colour_bar(width: int, height: int, value_range: Tuple[float, float]) -> np.ndarray:
    """(height, width, 3) uint8 JET gradient from ``value_range[0]`` (left) to ``[1]`` (right)."""
    ramp = np.linspace(value_range[0], value_range[1], max(width, 2), dtype=np.float64)[None, :].repeat(height, 0)
    return colourize(ramp, value_range)


def anomaly_panel(image: np.ndarray, anomaly_map: np.ndarray, value_range: Tuple[float, float],
                  content: PanelContent) -> np.ndarray:
    """The RGB uint8 panel of one image (see the module docstring).

    ``image`` (H, W, 3) uint8 and ``anomaly_map`` (H, W) float at the same size; ``value_range``
    the colour scale (values outside it saturate); masks in ``content`` at the image's size.
    """
    image, anomaly_map, (predicted, truth) = _enlarge(np.ascontiguousarray(image), anomaly_map,
                                                      [content.predicted_mask, content.truth])
    height, width = image.shape[:2]
    thickness = max(1, round(height / 200))
    outlined = image.copy()
    if truth is not None and truth.any():
        _outline(outlined, truth, TRUTH_COLOUR, thickness)
    if predicted is not None:
        _outline(outlined, predicted, PREDICTED_COLOUR, thickness)
    columns = [image, blend(image, colourize(anomaly_map, value_range)), outlined]
    total = 3 * width + 2 * GAP
    font_size = max(11, min(22, total // 55))
    font, small = _font(font_size), _font(max(10, font_size - 2))
    line = font_size + 4
    low, high = value_range
    titles = ["image", f"anomaly map (colours {low:.3g}..{high:.3g})", _outline_title(content)]
    header = [wrapped for text in content.header for wrapped in _wrap(text, font, total - 2 * GAP)]
    notes = list(content.notes)
    if content.pixel_threshold is None:
        notes.append(NO_PIXEL_THRESHOLD_NOTE)
    if content.annotated is False:
        notes.append(NO_MASK_NOTE)
    notes = [wrapped for text in notes for wrapped in _wrap(text, small, total - 2 * GAP)]
    title_lines = [_wrap(title, small, width) for title in titles]
    title_height = max(len(lines) for lines in title_lines) * line
    bar_height = max(10, font_size)
    top = GAP + len(header) * line + title_height
    bar_top = top + height + GAP
    canvas_height = bar_top + bar_height + line + len(notes) * line + GAP
    canvas = Image.new("RGB", (total, canvas_height), BACKGROUND)
    for index, column in enumerate(columns):
        canvas.paste(Image.fromarray(column), (index * (width + GAP), top))
    bar_left = width + GAP
    canvas.paste(Image.fromarray(colour_bar(width, bar_height, value_range)), (bar_left, bar_top))
    draw = ImageDraw.Draw(canvas)
    y = GAP
    for text in header:
        draw.text((GAP, y), text, fill=TEXT, font=font)
        y += line
    for index, lines in enumerate(title_lines):
        for number, text in enumerate(lines):
            draw.text((index * (width + GAP) + 2, y + number * line), text, fill=TEXT, font=small)
    labels_y = bar_top + bar_height + 2
    draw.text((bar_left, labels_y), f"{low:.4g}", fill=TEXT, font=small)
    high_text = f"{high:.4g}"
    draw.text((bar_left + width - draw.textlength(high_text, font=small), labels_y), high_text, fill=TEXT, font=small)
    if content.pixel_threshold is not None and low <= content.pixel_threshold <= high:
        x = bar_left + round((content.pixel_threshold - low) / (high - low) * (width - 1))
        draw.line([(x, bar_top - 2), (x, bar_top + bar_height + 1)], fill=(255, 255, 255), width=max(2, thickness))
        marker = f"pixel threshold {content.pixel_threshold:.4g}"
        marker_x = min(max(x - draw.textlength(marker, font=small) / 2, bar_left), bar_left + width)
        draw.text((marker_x, labels_y + line), marker, fill=TEXT, font=small)
    y = labels_y + line + (line if content.pixel_threshold is not None else 0)
    if y + len(notes) * line + GAP > canvas_height:
        grown = Image.new("RGB", (total, y + len(notes) * line + GAP), BACKGROUND)
        grown.paste(canvas, (0, 0))
        canvas, draw = grown, ImageDraw.Draw(grown)
    for text in notes:
        draw.text((GAP, y), text, fill=WARNING_TEXT, font=small)
        y += line
    return np.asarray(canvas)


def _outline_title(content: PanelContent) -> str:
    parts = [f"red: map >= {content.pixel_threshold:.4g}" if content.pixel_threshold is not None
             else "no predicted mask"]
    if content.annotated:
        parts.append("green: ground truth" if content.truth is not None and content.truth.any()
                     else "ground truth: no defect")
    elif content.annotated is False:
        parts.append("no mask")
    return "; ".join(parts)


def save_panel(panel: np.ndarray, path: Path, image_format: Optional[str] = None, quality: int = 90) -> Path:
    """Write an RGB uint8 panel to ``path`` (format from the suffix unless ``image_format``, e.g.
    ``"JPEG"`` for a temporary name); JPEG at ``quality``."""
    image = Image.fromarray(np.ascontiguousarray(panel))
    suffix = (image_format or Path(path).suffix.lstrip(".")).upper()
    if suffix in ("JPG", "JPEG"):
        image.save(path, format="JPEG", quality=quality)
    else:
        image.save(path, format=suffix or "PNG")
    return Path(path)


def evaluation_image(path: str, size: int) -> np.ndarray:
    """The image of ``path`` as the evaluation saw it: read as datasets read it (any storage
    mode) and resized to the model's ``size`` with the model's bicubic resize; (S, S, 3) uint8."""
    return np.asarray(ImageTransform(size).resize(read_rgb(path)))


def image_caption(score: float, label: Optional[int], threshold: Optional[float]) -> str:
    """``score 0.531 | ANOMALOUS (image threshold 0.5)``; the decision part says when no threshold is known."""
    if threshold is None:
        decision = "no image threshold: no decision"
    else:
        decision = f"{'ANOMALOUS' if label else 'normal'} (image threshold {threshold:.4g})"
    return f"score {score:.4g} | {decision}" if math.isfinite(score) else f"score {score} | {decision}"
