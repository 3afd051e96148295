"""Reading images and masks of any storage mode into what CLIP and the metrics expect.

Images become 8-bit RGB: grayscale is replicated, palette images are expanded, transparency
is composited over black (fully transparent pixels have no colour of their own), and
high-bit-depth scans (16-bit PNG/TIFF, float TIFF) are scaled to 0..255 -- by their storage
range by default, or by their own min/max. Masks become boolean arrays: any non-zero value of a
lossless file is foreground; JPEG masks are thresholded at half range so compression noise
around the object does not count.

Huge files are decoded in full (the reference resizes the full image, so do we) up to PIL's
decompression-bomb guard, ``PIL.Image.MAX_IMAGE_PIXELS``: beyond twice that many pixels a file
is refused with an error that says how to lift the guard for trusted data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

PathLike = Union[str, Path]
HIGH_BIT_DEPTH_SCALINGS = ("range", "minmax")
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


class UnreadableImageError(OSError):
    """An image or mask file is missing, truncated or not an image; the message names the file."""


def open_image(path: PathLike, role: str = "image") -> Image.Image:
    """Open and fully decode ``path``; any failure becomes :class:`UnreadableImageError`."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise UnreadableImageError(f"{role} file not found: {path}") from error
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(
            f"{role} {path} is refused by PIL's decompression-bomb guard ({error}); if the file is trusted, "
            "raise PIL.Image.MAX_IMAGE_PIXELS (None lifts the limit)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read {role} {path}: {error}") from error


def _scale_to_uint8(values: np.ndarray, scaling: str, full_range: float) -> np.ndarray:
    values = values.astype(np.float64)
    if scaling == "minmax":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    else:
        scaled = values / full_range * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _high_depth_to_gray(image: Image.Image, scaling: str) -> np.ndarray:
    values = np.asarray(image)
    if image.mode in _SIXTEEN_BIT_MODES:
        return _scale_to_uint8(values, scaling, 65535.0)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        if scaling == "range" and finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return _scale_to_uint8(np.nan_to_num(values), scaling, 1.0)
        return _scale_to_uint8(np.nan_to_num(values), "minmax", 1.0)
    # 32-bit integer container: PIL's mode for 16-bit PNGs in older releases.
    if scaling == "range" and values.min() >= 0 and values.max() <= 65535:
        return _scale_to_uint8(values, scaling, 65535.0)
    return _scale_to_uint8(values, "minmax", 1.0)


def to_rgb(image: Image.Image, high_bit_depth: str = "range") -> Image.Image:
    """8-bit RGB version of ``image`` (see the module docstring for the conversions)."""
    if high_bit_depth not in HIGH_BIT_DEPTH_SCALINGS:
        raise ValueError(f"high_bit_depth must be one of {HIGH_BIT_DEPTH_SCALINGS}, got {high_bit_depth!r}")
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_gray(image, high_bit_depth)).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    return image.convert("RGB")


def read_rgb(path: PathLike, high_bit_depth: str = "range") -> Image.Image:
    """The image at ``path`` as 8-bit RGB; errors name the file."""
    image = open_image(path, "image")
    try:
        return to_rgb(image, high_bit_depth)
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"cannot convert image {path} (mode {image.mode}) to RGB: {error}") from error


def mask_to_bool(image: Image.Image, lossy: bool = False) -> np.ndarray:
    """Foreground of a mask image: non-zero, or above half range for ``lossy`` (JPEG) files."""
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F", "1", "L"):
        values = np.asarray(image)
    else:
        values = np.asarray(image.convert("L"))
    if lossy:
        full = 65535 if image.mode in _SIXTEEN_BIT_MODES else 255
        return values > full / 2
    return values != 0


def read_binary_mask(path: PathLike) -> np.ndarray:
    """Boolean (H, W) foreground of the mask at ``path``; errors name the file."""
    image = open_image(path, "mask")
    return mask_to_bool(image, lossy=Path(path).suffix.lower() in LOSSY_SUFFIXES)
