"""AnomalyCLIP settings: the one place their defaults are written (imports no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

from ...engine.config import MethodConfig, block_numbers, check_choice, setting
from ..components.config import FrozenFeatureTraining

REFERENCE_UNUSED_PROJECTION_DIM = 896
DPAM_ATTENTIONS = ("vv", "qq", "kk")


@dataclass
class AnomalyCLIPConfig(MethodConfig):
    """Detector settings of the official scripts; ``features_list=(24,)`` is what the released
    checkpoints were trained and tested with, ``(6, 12, 18, 24)`` the paper's setting."""

    backbone_defaults: ClassVar[Dict[str, Any]] = {"activation": "quick_gelu", "pos_embed_interpolation": "bilinear"}

    n_ctx: int = setting(12, "learnable context length")
    depth: int = setting(9, "deep text prompt depth")
    t_n_ctx: int = setting(4, "deep text tokens per block")
    features_list: Tuple[int, ...] = setting((24,), "image blocks whose patch tokens make the maps (paper: 6 12 18 24)")
    dpam_layers: int = setting(20, "V-V (DPAM) depth: the last N-1 image blocks run V-V attention")
    dpam_attention: str = setting("vv", "DPAM attention variant", choices=DPAM_ATTENTIONS)
    temperature: float = setting(0.07, flag=False)
    sigma: float = setting(4.0, "Gaussian sigma of the anomaly map")
    seg_loss_weight: float = setting(4.0, "lambda of the local loss; 0 trains the global loss only, for data "
                                          "without masks")
    object_classes: Tuple[str, ...] = setting((), "object-aware ablation: one prompt pair per listed class name")
    half_precision_deep_tokens: bool = setting(True, flag=False)
    unused_projection_dim: int = setting(REFERENCE_UNUSED_PROJECTION_DIM, flag=False)

    def __post_init__(self) -> None:
        self.features_list = block_numbers("features_list", self.features_list)
        self.object_classes = tuple(self.object_classes)
        check_choice("dpam_attention", self.dpam_attention, DPAM_ATTENTIONS)


@dataclass
class AnomalyCLIPTraining(FrozenFeatureTraining):
    """Optimisation settings of the official training script (Adam, betas 0.5/0.999, 15 epochs)."""

    epoch: int = setting(15, "training epochs", aliases=("epochs",))


DEFAULTS = AnomalyCLIPConfig()
TRAINING = AnomalyCLIPTraining()
