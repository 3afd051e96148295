"""AnomalyCLIP hyper-parameters: the one place their defaults are written."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from ...engine.detector import MethodConfig
from .prompts import REFERENCE_UNUSED_PROJECTION_DIM


@dataclass
class AnomalyCLIPConfig(MethodConfig):
    """Hyper-parameters of the reference scripts; ``features_list=(24,)`` is what the released
    checkpoints were trained and tested with, ``(6, 12, 18, 24)`` the paper's setting."""

    n_ctx: int = 12
    depth: int = 9
    t_n_ctx: int = 4
    features_list: Tuple[int, ...] = (24,)
    dpam_layers: int = 20
    dpam_attention: str = "vv"
    temperature: float = 0.07
    sigma: float = 4.0
    seg_loss_weight: float = 4.0
    object_classes: Tuple[str, ...] = ()
    half_precision_deep_tokens: bool = True
    unused_projection_dim: int = REFERENCE_UNUSED_PROJECTION_DIM


@dataclass(frozen=True)
class AnomalyCLIPTraining:
    """Optimisation settings of the reference training script (Adam, betas 0.5/0.999)."""

    epochs: int = 15
    learning_rate: float = 1e-3
    batch_size: int = 8
    seed: int = 111


TRAINING = AnomalyCLIPTraining()
DEFAULTS = AnomalyCLIPConfig()
