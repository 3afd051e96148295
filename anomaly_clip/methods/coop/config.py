"""CoOp settings: the one place their defaults are written (imports no torch).

CoOp is AnomalyCLIP's learnt-prompt baseline (Tables 1-3, appendix A.2): learnable context
vectors followed by "normal [cls]" / "anomalous [cls]", trained with AnomalyCLIP's recipe and
scored as AnomalyCLIP scores. DPAM is **off** by default (``dpam_layers=0``): the paper's Table 8
times CoOp at 12.75 FPS, next to CLIP's 13.23 and above AnomalyCLIP without DPAM (10.21), and
CoOp's pixel AUROC on MVTec AD (33.3) is that of plain CLIP patch tokens (CLIP 38.4), not of V-V
attention; ``dpam_layers=20`` gives AnomalyCLIP's dual path instead. CoOp trains with
AnomalyCLIP's optimisation settings (:class:`~anomaly_clip.methods.anomalyclip.config.AnomalyCLIPTraining`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

from ...engine.config import MethodConfig, block_numbers, setting
from ..anomalyclip.config import DEFAULTS as ANOMALYCLIP
from ..components.config import ANOMALYCLIP_BACKBONE


@dataclass
class CoOpConfig(MethodConfig):
    """Context length, the blocks whose patch tokens make the maps (AnomalyCLIP's released
    setting, block 24), temperature, map sigma and local-loss weight as AnomalyCLIP, and DPAM
    depth (0 = plain CLIP, see the module docstring)."""

    backbone_defaults: ClassVar[Dict[str, Any]] = ANOMALYCLIP_BACKBONE

    n_ctx: int = setting(ANOMALYCLIP.n_ctx, "learnable context length")
    features_list: Tuple[int, ...] = setting(ANOMALYCLIP.features_list, "image blocks whose patch tokens make the "
                                                                        "maps")
    temperature: float = setting(ANOMALYCLIP.temperature, flag=False)
    sigma: float = setting(ANOMALYCLIP.sigma, "Gaussian sigma of the anomaly map")
    seg_loss_weight: float = setting(ANOMALYCLIP.seg_loss_weight, "lambda of the local loss; 0 trains the global "
                                                                  "loss alone (CoOp's own objective)")
    dpam_layers: int = setting(0, "V-V (DPAM) depth as AnomalyCLIP counts it; 0 = plain CLIP (CoOp), 20 = "
                                  "AnomalyCLIP's dual path")

    def __post_init__(self) -> None:
        self.features_list = block_numbers("features_list", self.features_list)
        if self.n_ctx < 1:
            raise ValueError(f"n_ctx must be positive, got {self.n_ctx}")
        if self.dpam_layers < 0:
            raise ValueError(f"dpam_layers must be 0 (no DPAM) or a DPAM depth, got {self.dpam_layers}")


DEFAULTS = CoOpConfig()
