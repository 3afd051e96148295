"""Anomaly-map smoothing on the device.

:func:`gaussian_filter` reproduces ``scipy.ndimage.gaussian_filter`` (default ``reflect``
border, ``truncate=4``) with separable 1-D convolutions, batched over images, so evaluation
never ships maps to the host just to blur them.
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


@lru_cache(maxsize=32)
def _gaussian_kernel(sigma: float, radius: int) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def symmetric_indices(size: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``size`` axis padded by ``radius`` with scipy's ``reflect`` rule
    (edge sample repeated: d c b a | a b c d | d c b a), valid for any radius."""
    positions = torch.arange(-radius, size + radius, device=device)
    period = 2 * size
    wrapped = torch.remainder(positions, period)
    return torch.where(wrapped >= size, period - 1 - wrapped, wrapped)


def _filter_axis(maps: torch.Tensor, kernel: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    size = maps.shape[dim]
    padded = maps.index_select(dim, symmetric_indices(size, radius, maps.device))
    moved = padded.movedim(dim, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    filtered = F.conv1d(flat, kernel.view(1, 1, -1))
    return filtered.reshape(*moved.shape[:-1], size).movedim(-1, dim)


def gaussian_filter(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Gaussian-filter each (H, W) map of a (..., H, W) tensor like scipy, on its device.

    Computed in float32 at least (float64 input stays float64); returns the input dtype.
    """
    if sigma <= 0:
        return maps
    radius = int(truncate * float(sigma) + 0.5)
    work_dtype = torch.float64 if maps.dtype == torch.float64 else torch.float32
    kernel = _gaussian_kernel(float(sigma), radius).to(device=maps.device, dtype=work_dtype)
    shape = maps.shape
    with torch.autocast(maps.device.type, enabled=False):
        work = maps.reshape(-1, shape[-2], shape[-1]).to(work_dtype)
        work = _filter_axis(work, kernel, radius, dim=1)
        work = _filter_axis(work, kernel, radius, dim=2)
    return work.reshape(shape).to(maps.dtype)


def gaussian_blur(maps: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Fixed-size Gaussian blur with mirror padding (torchvision's ``gaussian_blur`` rule)
    on (..., H, W) maps; used where a method blurs low-resolution maps before upsampling."""
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    radius = kernel_size // 2
    offsets = torch.linspace(-radius, radius, kernel_size, device=maps.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma).pow(2))
    kernel = kernel / kernel.sum()
    shape = maps.shape
    with torch.autocast(maps.device.type, enabled=False):
        work = maps.reshape(-1, 1, shape[-2], shape[-1]).float()
        work = F.pad(work, (radius, radius, radius, radius), mode="reflect")
        work = F.conv2d(work, kernel.view(1, 1, 1, -1))
        work = F.conv2d(work, kernel.view(1, 1, -1, 1))
    return work.reshape(shape).to(maps.dtype)
