"""All pixel-level metrics of one class from a single ranking of its pixels."""
from __future__ import annotations

from dataclasses import dataclass

from ._inputs import TensorOrChunks
from .ordering import DEFAULT_BLOCK_SIZE
from .pro import DEFAULT_FPR_LIMIT, DEFAULT_NUM_THRESHOLDS, check_pro_settings, get_aupro_definition
from .ranking import NOT_APPLICABLE, ranking_metrics
from .regions import LabelledMaps


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel AUROC, AP, F1-max and AUPRO of one class (NaN when not applicable); pixels scoring
    ``>= f1_threshold`` give the F1-max segmentation."""

    auroc: float
    average_precision: float
    f1_max: float
    aupro: float
    aupro_definition: str
    f1_threshold: float = float("nan")


def pixel_metrics(maps: TensorOrChunks, masks: TensorOrChunks, aupro: str = "compat",
                  fpr_limit: float = DEFAULT_FPR_LIMIT, num_thresholds: int = DEFAULT_NUM_THRESHOLDS,
                  block_size: int = DEFAULT_BLOCK_SIZE) -> PixelMetrics:
    """Pixel AUROC, AP and F1-max over all pixels of ``maps`` against ``masks``, plus AUPRO.

    ``maps`` and ``masks`` are ``[N, H, W]`` tensors or lists of such chunks (kept apart to
    avoid a concatenated copy). One sort of the pixels (in blocks of at most ``block_size``)
    serves AUROC, AP, F1-max and the exact AUPRO; ``aupro="compat"`` adds one binning pass.
    All NaN when the masks have no anomalous or no normal pixel.
    """
    definition = get_aupro_definition(aupro)
    check_pro_settings(fpr_limit, num_thresholds)
    data = LabelledMaps.from_tensors(maps, masks, block_size)
    if not data.applicable:
        return PixelMetrics(NOT_APPLICABLE, NOT_APPLICABLE, NOT_APPLICABLE, NOT_APPLICABLE, definition.name)
    ranked = ranking_metrics(data.groups())
    return PixelMetrics(ranked.auroc, ranked.average_precision, ranked.f1_max,
                        definition.compute(data, fpr_limit, num_thresholds), definition.name, ranked.f1_threshold)
