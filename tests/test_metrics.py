"""Metric functions against scikit-learn and against plain reference implementations written here."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from anomaly_clip.metrics import (aupro, binary_auroc, binary_average_precision, binary_f1_max,
                                  binary_ranking_metrics, label_regions, pixel_metrics)
from anomaly_clip.metrics.ordering import count_greater_equal, order_keys
from anomaly_clip.metrics.pro import _ThresholdBinning, area_up_to

# ---------------------------------------------------------------- references written for the tests


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return float(np.nanmax(f1))


def brute_force_exact_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """Every distinct score as a threshold, every region visited per threshold, area cut at ``limit``."""
    regions = []
    for mask in masks:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions.append([labelled == k for k in range(1, count + 1)])
    normal = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        above = maps >= threshold
        overlaps = [above[i][region].mean() for i, image_regions in enumerate(regions) for region in image_regions]
        points.append(((above & normal).sum() / normal.sum(), float(np.mean(overlaps))))
    points.append((1.0, 1.0))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        elif x0 < limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
    return area / limit


def plain_compat_aupro(maps: np.ndarray, masks: np.ndarray, steps: int = 200, limit: float = 0.3) -> float:
    """AnomalyCLIP's definition as a plain loop: threshold, visit every region, compute the FPR."""
    low, high = maps.min(), maps.max()
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        predicted = maps > threshold
        overlaps = [predicted[i][tuple(region.coords.T)].sum() / region.area for i, mask in enumerate(masks)
                    for region in measure.regionprops(measure.label(mask, connectivity=2))]
        fprs.append(np.logical_and(~masks, predicted).sum() / (~masks).sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < limit
    kept = fprs[keep]
    return auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep])


def random_class(rng: np.random.Generator, images: int = 4, size: int = 24, levels: int = 0,
                 dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Masks with several blobs (some touching only diagonally), maps higher inside them; ``levels`` > 0 forces ties."""
    masks = ndimage.gaussian_filter(rng.random((images, size, size)), (0, 1.5, 1.5)) > 0.56
    masks[0] = False  # one normal image
    maps = ndimage.gaussian_filter(rng.random((images, size, size)), (0, 1, 1)) + 0.25 * masks * rng.random(masks.shape)
    if levels:
        maps = np.round(maps * levels) / levels
    return maps.astype(dtype), masks


# ---------------------------------------------------------------- image-level ranking metrics


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_binary_metrics_match_sklearn_with_ties(dtype):
    rng = np.random.default_rng(0)
    for trial in range(40):
        size = int(rng.integers(2, 400))
        levels = int(rng.integers(1, 30)) if trial % 2 else 10_000
        scores = (rng.integers(0, levels, size) * rng.choice([-0.37, 1.3])).astype(dtype)
        labels = rng.integers(0, 2, size)
        if labels.min() == labels.max():
            continue
        result = binary_ranking_metrics(torch.from_numpy(scores), torch.from_numpy(labels))
        assert result.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert result.average_precision == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
        assert result.f1_max == pytest.approx(reference_f1_max(labels, scores), abs=1e-9)


def test_binary_metrics_hand_computed():
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 0, 1, 0])
    # Pairs (positive above negative): 0.9 beats both, 0.7 beats 0.6 -> 3 of 4.
    assert binary_auroc(scores, labels) == pytest.approx(0.75)
    # Recall steps of 1/2 at precision 1/1 and 2/3.
    assert binary_average_precision(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Best threshold 0.7: tp 2, fp 1, fn 0 -> F1 = 4 / 5.
    assert binary_f1_max(scores, labels) == pytest.approx(0.8)
    # A positive tied with one of two negatives counts half for that pair: (0.5 + 1) / 2.
    tied = binary_ranking_metrics(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([True, False, False]))
    assert tied.auroc == pytest.approx(0.75)
    assert tied.average_precision == pytest.approx(0.5)
    assert tied.f1_max == pytest.approx(2 / 3)


def test_signed_zeros_are_one_tie():
    scores = torch.tensor([0.0, -0.0, 0.0, -0.0, 1.0])
    labels = torch.tensor([1, 0, 0, 1, 0])
    assert binary_auroc(scores, labels) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))


def test_one_label_only_is_not_applicable_not_half():
    scores = torch.rand(10)
    for labels in (torch.ones(10), torch.zeros(10)):
        result = binary_ranking_metrics(scores, labels)
        assert all(math.isnan(v) for v in (result.auroc, result.average_precision, result.f1_max))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise(bad):
    scores = torch.tensor([0.1, bad, 0.3])
    with pytest.raises(ValueError, match="NaN or infinite"):
        binary_auroc(scores, torch.tensor([0, 1, 1]))


def test_bad_labels_and_sizes_raise():
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_auroc(torch.rand(3), torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="labels"):
        binary_auroc(torch.rand(3), torch.tensor([0, 1]))


# ---------------------------------------------------------------- ranking primitive


def test_order_keys_follow_every_kind_of_float():
    special = [0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, float("inf"), -float("inf"), 3.5, -3.5, 1e30, -1e30]
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        values = torch.cat([torch.tensor(special), torch.randn(500) * 10]).to(dtype)
        keys = order_keys(values).long()
        wide = values.double()
        assert torch.equal(keys[:, None] < keys[None, :], wide[:, None] < wide[None, :])
        assert torch.equal(keys[:, None] == keys[None, :], wide[:, None] == wide[None, :])


@pytest.mark.parametrize("block_size", [7, 60, 10_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_greater_equal_in_blocks(block_size, dtype):
    rng = np.random.default_rng(block_size)
    # Heavy ties (values held by far more items than a block, also at both ends), sparse values,
    # signed zeros, gaps.
    values = np.concatenate([np.full(120, 0.5), rng.integers(-5, 5, 300) / 4, rng.normal(0, 1e-3, 200),
                             [0.0, -0.0, 7.25, -9.0], np.full(60, 9.5), np.full(60, -20.0)])
    chunks = [torch.from_numpy(part).to(dtype) for part in np.array_split(rng.permutation(values), 3)]
    queries = torch.tensor(np.concatenate([np.unique(values), [-100.0, 100.0, 0.3, 0.5 + 1e-9]])).to(dtype)
    greater, equal = count_greater_equal(chunks, queries, block_size)
    flat = torch.cat(chunks)
    assert torch.equal(greater, (flat[None, :] > queries[:, None]).sum(1))
    assert torch.equal(equal, (flat[None, :] == queries[:, None]).sum(1))


def test_area_up_to_interpolates_at_the_limit():
    x = torch.tensor([0.0, 0.2, 0.2, 0.5, 1.0], dtype=torch.float64)
    y = torch.tensor([0.0, 0.4, 0.6, 0.9, 1.0], dtype=torch.float64)
    # Up to 0.2: triangle 0.04; vertical step: 0; 0.2 -> 0.3 with y 0.6 -> 0.7: 0.065.
    assert area_up_to(x, y, 0.3) == pytest.approx(0.04 + 0.065)
    assert area_up_to(x, y, 0.2) == pytest.approx(0.04)


# ---------------------------------------------------------------- regions


def test_regions_are_8_connected_and_stay_inside_each_image():
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal neighbours: one region
    masks[0, 3, 3:5] = True  # a second region
    masks[1, 0, 0] = True  # same place in the next image: its own region
    regions = label_regions([masks])
    assert regions.num_regions == 3
    assert sorted(regions.area.tolist()) == [1, 2, 2]
    assert regions.pixel_index.tolist() == torch.nonzero(masks.reshape(-1)).squeeze(1).tolist()
    assert regions.num_normal == 50 - 5


# ---------------------------------------------------------------- pixel metrics and AUPRO


@pytest.mark.parametrize("levels", [0, 12])
def test_exact_aupro_matches_brute_force(levels):
    rng = np.random.default_rng(levels + 1)
    for _ in range(2):
        maps, masks = random_class(rng, levels=levels)
        expected = brute_force_exact_aupro(maps, masks)
        for block_size in (10**9, 150):
            value = aupro(torch.from_numpy(maps), torch.from_numpy(masks), definition="exact", block_size=block_size)
            assert value == pytest.approx(expected, abs=1e-9)


def test_pixel_metrics_hand_computed():
    # Two one-pixel regions (not adjacent) and three normal pixels in one 1 x 5 image.
    maps = torch.tensor([[[0.9, 0.5, 0.3, 0.7, 0.1]]])
    masks = torch.tensor([[[1, 0, 1, 0, 0]]], dtype=torch.bool)
    result = pixel_metrics(maps, masks, aupro="exact")
    # 0.9 beats all three normal pixels, 0.3 beats one: 4 of 6 pairs.
    assert result.auroc == pytest.approx(4 / 6)
    # Recall 1/2 at precision 1, then 1 at precision 2/4.
    assert result.average_precision == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    # Best F1 2/3, reached at 0.9 (tp 1, fp 0) and again at 0.3 (tp 2, fp 2).
    assert result.f1_max == pytest.approx(2 / 3)
    # Curve (0, 0) -> (0, 1/2) -> (1/3, 1/2) ...: area to FPR 0.3 is 0.3 * 1/2, normalised 1/2.
    assert result.aupro == pytest.approx(0.5)


def test_exact_aupro_of_float16_maps_in_small_blocks():
    maps, masks = random_class(np.random.default_rng(8))
    half = torch.from_numpy(maps).half()  # many ties after rounding
    expected = brute_force_exact_aupro(half.float().numpy(), masks)
    assert aupro(half, torch.from_numpy(masks), "exact", block_size=100) == pytest.approx(expected, abs=1e-9)


def test_exact_aupro_other_limits_and_float64():
    rng = np.random.default_rng(7)
    maps, masks = random_class(rng, images=3, size=16, dtype=np.float64)
    for limit in (0.05, 0.3, 1.0):
        expected = brute_force_exact_aupro(maps, masks, limit)
        value = aupro(torch.from_numpy(maps), torch.from_numpy(masks), "exact", fpr_limit=limit)
        assert value == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("levels", [0, 9])
def test_compat_aupro_matches_plain_loop(dtype, levels):
    rng = np.random.default_rng(3 + levels)
    maps, masks = random_class(rng, images=5, size=20, levels=levels, dtype=dtype)
    maps = maps * 3 - 1  # negative scores too
    value = aupro(torch.from_numpy(maps), torch.from_numpy(masks), definition="compat")
    assert value == pytest.approx(plain_compat_aupro(maps, masks), abs=1e-12)


def test_compat_aupro_other_threshold_counts_and_limits():
    rng = np.random.default_rng(11)
    maps, masks = random_class(rng, images=3, size=16)
    for steps, limit in ((50, 0.3), (333, 0.5)):
        value = aupro(torch.from_numpy(maps), torch.from_numpy(masks), num_thresholds=steps, fpr_limit=limit)
        assert value == pytest.approx(plain_compat_aupro(maps, masks, steps, limit), abs=1e-12)


def test_compat_aupro_of_float16_maps_uses_their_float32_values():
    rng = np.random.default_rng(5)
    maps, masks = random_class(rng, images=3, size=16)
    half = torch.from_numpy(maps).half()
    value = aupro(half, torch.from_numpy(masks))
    assert value == pytest.approx(plain_compat_aupro(half.float().numpy(), masks), abs=1e-12)


def test_threshold_binning_is_exact_at_and_around_thresholds():
    for low, high in ((0.0, 1.0), (-3.7, 12.1), (1000.0, 1000.01)):
        low32, high32 = np.float32(low), np.float32(high)
        thresholds = np.arange(low32, high32, (high32 - low32) / 200).astype(np.float64)
        binning = _ThresholdBinning(torch.from_numpy(thresholds), float(low32), float(high32), 200, torch.float32)
        exact_edges = thresholds.astype(np.float32)
        values = np.concatenate([exact_edges, np.nextafter(exact_edges, np.float32(np.inf)),
                                 np.nextafter(exact_edges, np.float32(-np.inf)), [low32, high32],
                                 np.random.default_rng(0).uniform(low32, high32, 5000).astype(np.float32)])
        values = np.clip(values, low32, high32).astype(np.float32)
        expected = (values.astype(np.float64)[:, None] > thresholds[None, :]).sum(1)
        assert binning(torch.from_numpy(values)).tolist() == expected.tolist()


def test_pixel_metrics_share_one_ranking_and_match_sklearn():
    rng = np.random.default_rng(2)
    maps, masks = random_class(rng, images=4, size=24, levels=30)
    result = pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks), aupro="exact", block_size=300)
    labels, scores = masks.ravel(), maps.ravel()
    assert result.auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert result.average_precision == pytest.approx(average_precision_score(labels, scores), abs=1e-9)
    assert result.f1_max == pytest.approx(reference_f1_max(labels, scores), abs=1e-9)
    assert result.aupro == pytest.approx(brute_force_exact_aupro(maps, masks), abs=1e-9)
    compat = pixel_metrics([torch.from_numpy(maps[:1]), torch.from_numpy(maps[1:])],
                           [torch.from_numpy(masks[:1]), torch.from_numpy(masks[1:])])
    assert compat.aupro_definition == "compat"
    assert compat.auroc == pytest.approx(result.auroc, abs=1e-12)
    assert compat.aupro == pytest.approx(plain_compat_aupro(maps, masks), abs=1e-12)


def test_pixel_metrics_not_applicable_without_anomalous_or_normal_pixels():
    maps = torch.rand(2, 8, 8)
    for masks in (torch.zeros(2, 8, 8, dtype=torch.bool), torch.ones(2, 8, 8, dtype=torch.bool)):
        result = pixel_metrics(maps, masks)
        assert all(math.isnan(v) for v in (result.auroc, result.average_precision, result.f1_max, result.aupro))
        assert math.isnan(aupro(maps, masks, "exact"))


def test_constant_maps(caplog):
    masks = torch.zeros(2, 6, 6, dtype=torch.bool)
    masks[1, 2:4, 2:4] = True
    maps = torch.full((2, 6, 6), 0.5)
    # One tie group: the exact curve is the diagonal, its area to 0.3 is 0.045.
    assert aupro(maps, masks, "exact") == pytest.approx(0.045 / 0.3)
    assert pixel_metrics(maps, masks).auroc == pytest.approx(0.5)
    with caplog.at_level(logging.WARNING):
        assert math.isnan(aupro(maps, masks, "compat"))
    assert "undefined" in caplog.text


def test_bad_maps_and_settings_raise():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    maps = torch.rand(1, 4, 4)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pixel_metrics(maps.masked_fill(masks, float("nan")), masks)
    with pytest.raises(ValueError, match="NaN or infinite"):
        aupro(maps.masked_fill(~masks, float("inf")), masks, "exact")
    with pytest.raises(ValueError, match="unknown AUPRO definition"):
        aupro(maps, masks, "approximate")
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, fpr_limit=0.0)
    with pytest.raises(ValueError, match="do not match"):
        aupro(maps, masks[:, :3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        aupro(maps, masks.float() * 2)


def test_maps_with_a_channel_axis_and_uint8_masks():
    rng = np.random.default_rng(9)
    maps, masks = random_class(rng, images=2, size=12)
    plain = aupro(torch.from_numpy(maps), torch.from_numpy(masks), "exact")
    channel = aupro(torch.from_numpy(maps)[:, None], torch.from_numpy(masks.astype(np.uint8))[:, None], "exact")
    assert channel == plain


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_numbers_on_cuda():
    rng = np.random.default_rng(4)
    maps, masks = random_class(rng, images=4, size=32, levels=40)
    for definition in ("compat", "exact"):
        on_cpu = pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks), aupro=definition, block_size=500)
        on_gpu = pixel_metrics(torch.from_numpy(maps).cuda(), torch.from_numpy(masks).cuda(), aupro=definition,
                               block_size=500)
        for name in ("auroc", "average_precision", "f1_max", "aupro"):
            assert getattr(on_gpu, name) == pytest.approx(getattr(on_cpu, name), abs=1e-9)
