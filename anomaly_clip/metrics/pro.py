"""AUPRO: area under the per-region-overlap (PRO) curve, in its two published definitions.

A PRO point at a threshold is the mean, over all ground-truth regions of a class (8-connected
components of each mask), of the fraction of the region above the threshold; its FPR is the
fraction of normal pixels above the threshold.

``"compat"`` (AnomalyCLIP's evaluation, which produced its published tables): the thresholds
are ``numpy.arange(min, max, (max - min) / 200)`` with the min and max of all maps of the class
taken in the maps' float type, exactly as NumPy computes them (200 values, occasionally 201 from
rounding); a pixel counts at a threshold when its score is strictly above it. Points with
FPR < 0.3 are kept, their FPRs rescaled to [0, 1] by their own minimum and maximum, and the
trapezoid area is taken. Here every pixel is binned once into the thresholds (arithmetic bin,
exact comparison near bin edges), and counts per bin give all points: no pass per threshold.

``"exact"`` (the MVTec AD benchmark's): the PRO curve through every distinct score, from
(0, 0), integrated with the trapezoid rule up to FPR 0.3 (interpolating linearly at 0.3) and
divided by 0.3. It comes from the pixel ranking shared with pixel AUROC/AP/F1-max.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict

import numpy as np
import torch
from torch import Tensor

from ._inputs import TensorOrChunks
from .ordering import DEFAULT_BLOCK_SIZE, key_dtype
from .ranking import NOT_APPLICABLE
from .regions import LabelledMaps

logger = logging.getLogger(__name__)

DEFAULT_FPR_LIMIT = 0.3
DEFAULT_NUM_THRESHOLDS = 200


@dataclass(frozen=True)
class AuproDefinition:
    """A registered AUPRO definition: ``compute(data, fpr_limit, num_thresholds) -> float``."""

    name: str
    description: str
    compute: Callable[[LabelledMaps, float, int], float]


AUPRO_DEFINITIONS: Dict[str, AuproDefinition] = {}


def register_aupro(name: str, description: str):
    """Function decorator adding an AUPRO definition to :data:`AUPRO_DEFINITIONS`."""

    def decorator(compute: Callable[[LabelledMaps, float, int], float]) -> Callable[[LabelledMaps, float, int], float]:
        if name in AUPRO_DEFINITIONS:
            raise ValueError(f"AUPRO definition {name!r} is already registered")
        AUPRO_DEFINITIONS[name] = AuproDefinition(name, description, compute)
        return compute

    return decorator


def get_aupro_definition(name: str) -> AuproDefinition:
    try:
        return AUPRO_DEFINITIONS[name]
    except KeyError:
        raise ValueError(f"unknown AUPRO definition {name!r}; available: {sorted(AUPRO_DEFINITIONS)}") from None


def check_pro_settings(fpr_limit: float, num_thresholds: int) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must lie in (0, 1], got {fpr_limit}")
    if int(num_thresholds) != num_thresholds or num_thresholds < 2:
        raise ValueError(f"num_thresholds must be an integer >= 2, got {num_thresholds}")


@register_aupro("exact", "MVTec AD benchmark: exact PRO curve integrated to the FPR limit, divided by it")
def exact_aupro(data: LabelledMaps, fpr_limit: float = DEFAULT_FPR_LIMIT,
                num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> float:
    """Exact AUPRO from the shared pixel ranking (``num_thresholds`` is not used).

    Between two distinct scores of anomalous pixels the curve is flat (only normal pixels are
    passed), and across one such score it is a straight step, so the polyline through
    "before" and "after" points of each group is the full exact curve.
    """
    groups = data.groups()
    num_normal, num_regions = groups.num_negatives, data.regions.num_regions
    covered = groups.weights.cumsum(0)
    covered_before = torch.cat([covered.new_zeros(1), covered[:-1]])
    fpr = torch.stack([groups.negatives_above, groups.false_positives], dim=1).reshape(-1).double() / num_normal
    pro = (torch.stack([covered_before, covered], dim=1).reshape(-1) / num_regions).clamp(max=1.0)
    fpr = torch.cat([fpr.new_zeros(1), fpr, fpr.new_ones(1)])
    pro = torch.cat([pro.new_zeros(1), pro, pro[-1:]])
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def area_up_to(x: Tensor, y: Tensor, limit: float) -> float:
    """Trapezoid area under the polyline ``(x, y)`` (x non-decreasing) from ``x[0]`` to ``limit``.

    ``y`` at ``limit`` is interpolated linearly between its neighbours; ``limit`` must lie
    within ``[x[0], x[-1]]``.
    """
    inside = int((x <= limit).sum())
    area = float(((x[1:inside] - x[:inside - 1]) * (y[1:inside] + y[:inside - 1]) / 2).sum())
    if inside < x.numel():
        x0, x1, y0, y1 = (float(v) for v in (x[inside - 1], x[inside], y[inside - 1], y[inside]))
        at_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + at_limit) / 2
    return area


@register_aupro("compat", "AnomalyCLIP: evenly spaced thresholds in [min, max), points with FPR below the "
                          "limit, their FPRs rescaled to [0, 1], trapezoid area")
def compat_aupro(data: LabelledMaps, fpr_limit: float = DEFAULT_FPR_LIMIT,
                 num_thresholds: int = DEFAULT_NUM_THRESHOLDS) -> float:
    """AnomalyCLIP-compatible AUPRO, by binning every pixel once into the thresholds."""
    maps = data.maps
    compute_dtype = torch.float64 if any(key_dtype(m.dtype) == torch.float64 for m in maps) else torch.float32
    scalar = np.float64 if compute_dtype == torch.float64 else np.float32  # the maps' min/max, as in NumPy
    low_value, high_value = data.score_range
    low, high = scalar(low_value), scalar(high_value)
    if not high > low:
        logger.warning("compat AUPRO is undefined for constant maps (no thresholds between min and max)")
        return NOT_APPLICABLE
    # The official threshold list, NumPy's own arithmetic included (float64 values from arange).
    thresholds = np.arange(low, high, (high - low) / num_thresholds).astype(np.float64)
    binning = _ThresholdBinning(torch.from_numpy(thresholds).to(maps[0].device), float(low), float(high),
                                num_thresholds, compute_dtype)
    size = thresholds.size + 1
    all_counts = anomalous_counts = anomalous_weights = 0
    for values, positions, weights in data.pieces():
        all_counts = all_counts + torch.bincount(binning(values.to(compute_dtype)), minlength=size)
        anomalous = binning.exact(values[positions])
        anomalous_counts = anomalous_counts + torch.bincount(anomalous, minlength=size)
        anomalous_weights = anomalous_weights + torch.bincount(anomalous, weights=weights, minlength=size)
    # A pixel with b thresholds below it is positive at thresholds 0 .. b-1: point k counts bins > k.
    false_positives = _suffix_sums(all_counts - anomalous_counts)[1:]
    covered = _suffix_sums(anomalous_weights)[1:]
    fpr = false_positives.double().cpu() / data.regions.num_normal
    pro = covered.double().cpu() / data.regions.num_regions
    return _rescaled_area(fpr, pro, fpr_limit)


class _ThresholdBinning:
    """For each score, how many thresholds lie strictly below it, exactly, in a few passes.

    The count is ``floor((score - min) / step) + 1``, computed in the maps' float type; only
    scores within rounding distance ``slack`` of a bin edge (a bound from the thresholds' actual
    deviation from the ideal grid and the float type's precision) are compared exactly with the
    float64 thresholds. Shifting the position by ``slack`` makes "near an edge" a single test:
    fractional part below ``2 * slack``.
    """

    def __init__(self, thresholds: Tensor, low: float, high: float, num_thresholds: int, dtype: torch.dtype):
        self.thresholds = thresholds.to(torch.float64)
        step = (high - low) / num_thresholds
        grid = low + step * torch.arange(thresholds.numel(), dtype=torch.float64)
        deviation = float((self.thresholds.cpu() - grid).abs().max()) / step
        scale = max(abs(low), abs(high)) / step + thresholds.numel()
        self.slack = deviation + 4 * torch.finfo(dtype).eps * scale + 1e-9
        self.scale = 1.0 / step
        self.offset = 1.0 - low / step + self.slack

    def exact(self, values: Tensor) -> Tensor:
        return torch.searchsorted(self.thresholds, values.to(torch.float64)).to(torch.int32)

    def __call__(self, values: Tensor) -> Tensor:
        if self.slack >= 0.25:
            return self.exact(values)
        shifted = values.mul(self.scale).add_(self.offset)
        near_edge = (torch.frac(shifted) < 2 * self.slack).nonzero().squeeze(1)
        below = shifted.to(torch.int32)
        below[near_edge] = self.exact(values[near_edge])
        return below


def _suffix_sums(counts: Tensor) -> Tensor:
    return counts.flip(0).cumsum(0).flip(0)


def _rescaled_area(fpr: Tensor, pro: Tensor, fpr_limit: float) -> float:
    """AnomalyCLIP's area: points with FPR below the limit, FPRs min-max rescaled, trapezoids."""
    keep = fpr < fpr_limit
    fpr, pro = fpr[keep], pro[keep]
    if fpr.numel() < 2 or float(fpr.max()) == float(fpr.min()):
        logger.warning("compat AUPRO is undefined: fewer than two distinct FPRs below %s", fpr_limit)
        return NOT_APPLICABLE
    fpr = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # FPR falls as the threshold rises, so the area runs right to left.
    return float(((fpr[:-1] - fpr[1:]) * (pro[:-1] + pro[1:]) / 2).sum())


def aupro(maps: TensorOrChunks, masks: TensorOrChunks, definition: str = "compat",
          fpr_limit: float = DEFAULT_FPR_LIMIT, num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
          block_size: int = DEFAULT_BLOCK_SIZE) -> float:
    """AUPRO of anomaly ``maps`` against binary ``masks`` (``[N, H, W]`` tensors or lists of them).

    ``definition`` is ``"compat"`` (AnomalyCLIP's 200-threshold value, as in its published tables)
    or ``"exact"`` (MVTec AD benchmark). NaN when the masks have no anomalous or no normal pixel.
    """
    chosen = get_aupro_definition(definition)
    check_pro_settings(fpr_limit, num_thresholds)
    data = LabelledMaps.from_tensors(maps, masks, block_size)
    if not data.applicable:
        return NOT_APPLICABLE
    return chosen.compute(data, fpr_limit, num_thresholds)
