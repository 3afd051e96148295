"""F1-max thresholds returned by the metrics, against a brute-force reference."""
from __future__ import annotations

import math

import pytest
import torch

from anomaly_clip.metrics import binary_f1_max_threshold, binary_ranking_metrics, pixel_metrics


def brute_force_f1_threshold(scores: torch.Tensor, labels: torch.Tensor):
    """Every distinct score tried as ``score >= t``; the highest t among the best F1s."""
    best, best_threshold = -1.0, math.nan
    for threshold in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= threshold
        tp = int((predicted & labels).sum())
        fp = int((predicted & ~labels).sum())
        fn = int((~predicted & labels).sum())
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best:
            best, best_threshold = f1, threshold
    return best, best_threshold


@pytest.mark.parametrize("seed", range(6))
def test_f1_threshold_matches_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    size = 40 + 7 * seed
    scores = torch.randint(0, 12, (size,), generator=generator).float() / 4  # many ties
    labels = torch.rand(size, generator=generator) < 0.3 + 0.05 * seed
    f1, threshold = binary_f1_max_threshold(scores, labels)
    expected_f1, expected_threshold = brute_force_f1_threshold(scores, labels)
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold
    assert binary_ranking_metrics(scores, labels).f1_threshold == threshold


def test_pixel_metrics_return_the_pixel_threshold():
    generator = torch.Generator().manual_seed(3)
    maps = torch.rand(3, 16, 16, generator=generator)
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[1, 4:9, 4:9] = True
    maps[1, 4:9, 4:9] += 0.4
    metrics = pixel_metrics(maps, masks)
    expected_f1, expected_threshold = brute_force_f1_threshold(maps.reshape(-1), masks.reshape(-1))
    assert metrics.f1_threshold == pytest.approx(expected_threshold)
    assert metrics.f1_max == pytest.approx(expected_f1)


def test_threshold_is_nan_when_one_class_is_missing():
    f1, threshold = binary_f1_max_threshold(torch.rand(5), torch.zeros(5, dtype=torch.bool))
    assert math.isnan(f1) and math.isnan(threshold)
