"""The one reader of image and mask files: any storage mode into what CLIP and the metrics expect.

Every image and mask of the package -- datasets, ``predict``, calibration, normal references --
is decoded here, so they all see the same pixels:

* **Suffixes.** :data:`IMAGE_SUFFIXES` is the package's one list of image file suffixes (folder
  scans, dataset layouts, ``predict`` inputs).
* **Orientation.** An EXIF orientation tag (phone and camera JPEGs, some TIFFs) is applied as
  image viewers do (:func:`PIL.ImageOps.exif_transpose`), for images and masks alike, so maps and
  masks match the image as displayed. Files without the tag (or with tag 1) are read as stored,
  exactly as the reference code reads them.
* **Multi-frame files** (animated GIF/PNG/WebP, multi-page TIFF): the first frame is used and a
  warning names the file (once per file and process).
* **Images** become 8-bit RGB: grayscale is replicated, palette images are expanded, transparency
  is composited over black (fully transparent pixels have no colour of their own), and
  high-bit-depth scans (16-bit PNG/TIFF, float TIFF) are scaled to 0..255 -- by their storage
  range by default, or by their own min/max.
* **Masks** become boolean arrays, see :func:`mask_to_bool`: in a lossless file any non-zero
  label in any colour channel is defect (``(1, 0, 0)`` included; fully transparent pixels are
  background). A lossy file (JPEG, lossy WebP) is two-level at best: defect pixels are those above
  half of the file's strongest value, and a file whose strongest value is below
  :data:`MIN_LOSSY_MASK_LEVEL` is refused, because a 0/1 label cannot be told from the
  compression noise (JPEG erases or smears it; measured: at quality 50 nothing survives).

Huge files are decoded in full (the reference resizes the full image, so do we) up to PIL's
decompression-bomb guard, ``PIL.Image.MAX_IMAGE_PIXELS``: beyond twice that many pixels a file
is refused with an error that says how to lift the guard for trusted data.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Set, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
IMAGE_SUFFIXES = frozenset({
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".avif",
})
"""Suffixes (lower case) of the image files the package lists: formats PIL decodes."""
HIGH_BIT_DEPTH_SCALINGS = ("range", "minmax")
MIN_LOSSY_MASK_LEVEL = 32
"""Smallest strongest value (of 255) a lossy mask may have; below it labels drown in compression noise."""
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_SINGLE_CHANNEL_MODES = frozenset({"1", "L", "I", "F"}) | _SIXTEEN_BIT_MODES
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_ORIENTATION_TAG = 0x0112
_warned_multi_frame: Set[str] = set()


class UnreadableImageError(OSError):
    """An image or mask file is missing, truncated, not an image, or (a mask) cannot be
    interpreted; the message names the file."""


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a visible file with one of the :data:`IMAGE_SUFFIXES`."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _orientation(image: Image.Image, path: PathLike) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception as error:  # a damaged EXIF block must not make the pixels unreadable
        logger.warning("ignoring the unreadable EXIF data of %s (%s); using the stored orientation", path, error)
        return 1


def _decode(path: PathLike, role: str) -> Tuple[Image.Image, str]:
    """The first frame of ``path``, fully decoded and turned upright, and its format name."""
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            opened.load()
            upright = ImageOps.exif_transpose(opened) if _orientation(opened, path) != 1 else opened.copy()
            file_format = opened.format or ""
    except FileNotFoundError as error:
        raise UnreadableImageError(f"{role} file not found: {path}") from error
    except Image.DecompressionBombError as error:
        raise UnreadableImageError(
            f"{role} {path} is refused by PIL's decompression-bomb guard ({error}); if the file is trusted, "
            "raise PIL.Image.MAX_IMAGE_PIXELS (None lifts the limit)") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise UnreadableImageError(f"cannot read {role} {path}: {error}") from error
    if frames > 1 and str(path) not in _warned_multi_frame:
        _warned_multi_frame.add(str(path))
        logger.warning("%s %s has %d frames (an animation or a multi-page file); only the first frame is used",
                       role, path, frames)
    return upright, file_format


def open_image(path: PathLike, role: str = "image") -> Image.Image:
    """Open and fully decode ``path`` (first frame, EXIF orientation applied); any failure
    becomes :class:`UnreadableImageError` naming the file and its ``role``."""
    return _decode(path, role)[0]


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
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
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


def mask_levels(image: Image.Image) -> np.ndarray:
    """(H, W) label strength of a mask image: its value for single-channel modes (NaN as 0), the
    strongest colour channel otherwise (palette entries by their colour, CMYK as displayed), and
    0 where a pixel is fully transparent."""
    if image.mode in _SINGLE_CHANNEL_MODES:
        values = np.asarray(image)
        return np.nan_to_num(values) if image.mode == "F" else values
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        return np.where(rgba[..., 3] > 0, rgba[..., :3].max(axis=2), 0).astype(np.uint8)
    return np.asarray(image.convert("RGB")).max(axis=2)


def mask_to_bool(image: Image.Image, lossy: bool = False) -> np.ndarray:
    """Boolean (H, W) defect pixels of a mask image.

    Lossless: any non-zero :func:`mask_levels` value is defect (label masks holding 1, 2, ...
    and ``(1, 0, 0)`` colour labels count). ``lossy`` (JPEG, lossy WebP): the file is read as
    two-level, background 0 and defect at its strongest value ``L``; defect pixels are those
    above ``L / 2``, the midpoint, which compression noise around edges does not reach. Raises
    ``ValueError`` when ``0 < L < MIN_LOSSY_MASK_LEVEL`` (of 255, scaled for 16-bit files): such
    low labels (0/1 masks) cannot be told from the compression noise.
    """
    values = mask_levels(image)
    if not lossy:
        return values != 0
    full = 65535 if image.mode in _SIXTEEN_BIT_MODES else 255
    peak = float(values.max()) if values.size else 0.0
    if 0 < peak < MIN_LOSSY_MASK_LEVEL * full / 255:
        raise ValueError(
            f"its strongest value is {peak:g} of {full}: a lossy-compressed mask with such low labels (0/1) "
            f"cannot be told apart from compression noise; save the masks losslessly (PNG, BMP, TIFF) with "
            f"defect pixels non-zero, or with defect pixels at 255")
    return values > peak / 2


def _is_lossy_webp(path: PathLike) -> bool:
    """Whether a WebP file holds lossy (``VP8 ``) rather than lossless (``VP8L``) image data,
    found by walking its RIFF chunks (headers only)."""
    with open(path, "rb") as handle:
        handle.seek(12)
        while True:
            header = handle.read(8)
            if len(header) < 8:
                return False
            fourcc, size = header[:4], int.from_bytes(header[4:], "little")
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8 "
            handle.seek(size + (size & 1), 1)


def read_binary_mask(path: PathLike) -> np.ndarray:
    """Boolean (H, W) defect pixels of the mask at ``path`` (rule: :func:`mask_to_bool`; lossy
    when the file is JPEG or lossy WebP, whatever its suffix); errors name the file."""
    image, file_format = _decode(path, "mask")
    lossy = file_format in _LOSSY_FORMATS or (file_format == "WEBP" and _is_lossy_webp(path))
    try:
        return mask_to_bool(image, lossy=lossy)
    except ValueError as error:
        raise UnreadableImageError(f"cannot use mask {path}: {error}") from error
