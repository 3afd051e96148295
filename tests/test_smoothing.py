"""Device-side smoothing against scipy / a direct reflect-padded reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anomaly_clip.engine.smoothing import gaussian_blur, gaussian_filter, symmetric_indices


@pytest.mark.parametrize("shape,sigma", [((3, 64, 64), 4.0), ((2, 37, 23), 4.0), ((1, 5, 7), 4.0),
                                         ((2, 30, 30), 1.5), ((4, 3, 16, 16), 0.7)])
def test_gaussian_filter_matches_scipy(shape, sigma):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 3
    ours = gaussian_filter(maps, sigma)
    flat = maps.reshape(-1, *shape[-2:]).numpy()
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=sigma) for m in flat]).reshape(shape)
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=1e-5)
    assert ours.dtype == maps.dtype and ours.shape == maps.shape


def test_gaussian_filter_float64_is_exact_and_zero_sigma_is_identity():
    maps = torch.rand(2, 9, 11, dtype=torch.float64)
    expected = np.stack([scipy.ndimage.gaussian_filter(m, sigma=2.0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_filter(maps, 2.0).numpy(), expected, atol=1e-12)
    assert gaussian_filter(maps, 0) is maps


def test_symmetric_indices_repeat_the_edge_sample():
    assert symmetric_indices(3, 4, torch.device("cpu")).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]


def test_gaussian_blur_matches_mirror_padded_convolution():
    maps = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(1))
    offsets = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-0.5 * offsets ** 2)
    kernel2d = torch.outer(kernel, kernel) / kernel.sum() ** 2
    padded = F.pad(maps[:, None], (3, 3, 3, 3), mode="reflect")
    expected = F.conv2d(padded, kernel2d[None, None])[:, 0]
    torch.testing.assert_close(gaussian_blur(maps, 7, 1.0), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        gaussian_blur(maps, 4, 1.0)


def test_filters_and_similarities_stay_float32_under_autocast():
    from anomaly_clip.engine.precision import float32_einsum

    maps = torch.rand(2, 20, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        filtered = gaussian_filter(maps, 2.0)
        blurred = gaussian_blur(maps, 5, 1.0)
        products = float32_einsum("bi,bi->b", maps.flatten(1), maps.flatten(1))
    torch.testing.assert_close(filtered, gaussian_filter(maps, 2.0))
    torch.testing.assert_close(blurred, gaussian_blur(maps, 5, 1.0))
    assert products.dtype == torch.float32
    torch.testing.assert_close(products, (maps.flatten(1) ** 2).sum(dim=1))
