"""Settings shared by several methods (imports no torch): the CLIP baselines' detector settings and
the optimisation settings of methods trained on frozen image features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

from ...engine.config import CACHE_MODES, MethodConfig, block_numbers, check_choice, setting

CLIP_LOGIT_SCALE = 100.0
"""CLIP's learnt logit scale (exp of its temperature parameter, clamped at 100 in training)."""
ANOMALYCLIP_BACKBONE = {"activation": "quick_gelu", "pos_embed_interpolation": "bilinear"}
"""Backbone settings of AnomalyCLIP's code, in which its authors also ran CLIP, CLIP-AC and CoOp."""


@dataclass
class CLIPBaselineConfig(MethodConfig):
    """Settings of the CLIP baselines (AnomalyCLIP appendix A.2): blocks whose patch tokens make the
    maps (empty = the last), the softmax temperature (1 / CLIP's logit scale) and the map's
    Gaussian sigma. The backbone is AnomalyCLIP's: its authors re-ran both baselines in their code."""

    backbone_defaults: ClassVar[Dict[str, Any]] = ANOMALYCLIP_BACKBONE

    features_list: Tuple[int, ...] = setting((), "image blocks whose patch tokens make the maps, summed (default: "
                                                 "the last block)")
    temperature: float = setting(1.0 / CLIP_LOGIT_SCALE, "softmax temperature of the scores (0.01 = 1 / CLIP's "
                                                         "logit scale)")
    sigma: float = setting(4.0, "Gaussian sigma of the anomaly map (0: no smoothing)")

    def __post_init__(self) -> None:
        self.features_list = block_numbers("features_list", self.features_list, allow_empty=True)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")


@dataclass
class FrozenFeatureTraining:
    """Optimisation settings of a method that trains small parts on cached frozen image features
    with Adam (AnomalyCLIP, CoOp, APRIL-GAN); each method sets its official epoch count."""

    epoch: int = setting(15, "training epochs", aliases=("epochs",))
    learning_rate: float = setting(1e-3, "Adam learning rate")
    batch_size: int = setting(8, "training batch size")
    feature_cache: str = setting("auto", "reuse frozen image features after the first epoch (auto: device/host/disk "
                                         "by size; off recomputes every epoch)", choices=CACHE_MODES)

    def __post_init__(self) -> None:
        check_choice("feature_cache", self.feature_cache, CACHE_MODES)
        if self.epoch < 1 or self.batch_size < 1:
            raise ValueError(f"need epoch >= 1 and batch_size >= 1 (--epoch, --batch_size), got epoch={self.epoch}, "
                             f"batch_size={self.batch_size}")
