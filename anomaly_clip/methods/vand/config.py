"""APRIL-GAN (VAND) settings: the one place their defaults are written (official ``train.sh`` /
``test_*.sh`` of ByChelsea/VAND-APRIL-GAN; imports no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

from ...engine.config import MethodConfig, block_numbers, setting
from ..components.config import FrozenFeatureTraining

OFFICIAL_BACKBONE: Dict[str, Any] = {"activation": "gelu", "pos_embed_interpolation": "bicubic_antialias"}
"""The official code rebuilds ViT-L/14-336 from its JSON config (exact GELU, not QuickGELU) and
resizes the 24 x 24 position grid to 37 x 37 bicubically with antialiasing (its open_clip copy)."""


@dataclass
class VANDConfig(MethodConfig):
    """A VAND detector's settings (stored in checkpoints).

    ``features_list``: 1-based blocks whose raw tokens are projected to the text space (one
    linear layer each); ``few_shot_features``: blocks whose raw tokens the few-shot memory
    compares (empty = ``features_list``); ``logit_scale``: the fixed 100 of every similarity.
    """

    backbone_defaults: ClassVar[Dict[str, Any]] = OFFICIAL_BACKBONE

    features_list: Tuple[int, ...] = setting((6, 12, 18, 24), "image blocks whose raw tokens are projected, one "
                                                              "linear layer each")
    few_shot_features: Tuple[int, ...] = setting((), "blocks whose raw tokens the few-shot memory "
                                                     "(--reference_images) compares (default: --features_list)")
    logit_scale: float = setting(100.0, flag=False)

    def __post_init__(self) -> None:
        self.features_list = block_numbers("features_list", self.features_list)
        self.few_shot_features = block_numbers("few_shot_features", self.few_shot_features, allow_empty=True)
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {self.logit_scale}")

    @property
    def memory_layers(self) -> Tuple[int, ...]:
        return self.few_shot_features or self.features_list


@dataclass
class VANDTraining(FrozenFeatureTraining):
    """Optimisation settings of the official ``train.sh`` (MVTec AD run: 3 epochs, mosaics 0.2;
    the VisA run uses 15 epochs and no mosaics, see ``configs/vand/``)."""

    epoch: int = setting(3, "training epochs", aliases=("epochs",))
    aug_rate: float = setting(0.2, "probability of replacing a training image by a 2 x 2 mosaic of four images of "
                                   "its class (official: 0.2 on MVTec AD, 0 on VisA)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.aug_rate <= 1.0:
            raise ValueError(f"aug_rate must lie in [0, 1], got {self.aug_rate}")


DEFAULTS = VANDConfig()
TRAINING = VANDTraining()
