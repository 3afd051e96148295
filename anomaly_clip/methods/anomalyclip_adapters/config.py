"""Settings of the hybrid method (imports no torch); the prompt shape defaults are AnomalyCLIP's own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional

from ...engine.config import setting
from ..aaclip.config import AdaptedImageConfig, ImageStageTraining
from ..anomalyclip.config import DEFAULTS as PROMPT_DEFAULTS
from ..anomalyclip.config import TRAINING as PROMPT_TRAINING
from ..anomalyclip.config import AnomalyCLIPConfig

PROMPT_FIELDS = ("n_ctx", "depth", "t_n_ctx", "half_precision_deep_tokens", "unused_projection_dim")


@dataclass
class PromptAdapterConfig(AdaptedImageConfig):
    """AA-CLIP image side plus the shape of AnomalyCLIP's object-agnostic prompt learner; the
    prompts are learnt on AnomalyCLIP's backbone settings (QuickGELU, bilinear)."""

    backbone_defaults: ClassVar[Dict[str, Any]] = AnomalyCLIPConfig.backbone_defaults

    n_ctx: int = setting(PROMPT_DEFAULTS.n_ctx, "learnable context length")
    depth: int = setting(PROMPT_DEFAULTS.depth, "deep text prompt depth")
    t_n_ctx: int = setting(PROMPT_DEFAULTS.t_n_ctx, "deep text tokens per block")
    half_precision_deep_tokens: bool = setting(PROMPT_DEFAULTS.half_precision_deep_tokens, flag=False)
    unused_projection_dim: int = setting(PROMPT_DEFAULTS.unused_projection_dim, flag=False)


@dataclass
class PromptAdapterTraining(ImageStageTraining):
    """Stage 1 trains (or takes) AnomalyCLIP prompts, stage 2 is AA-CLIP's image stage."""

    prompt_checkpoint: Optional[str] = setting(None, "trained AnomalyCLIP checkpoint (ours or official epoch_15.pth) "
                                                     "to take the prompts from; without it stage 1 trains them",
                                               metavar="CKPT")
    prompt_epoch: int = setting(PROMPT_TRAINING.epoch, "stage-1 (AnomalyCLIP prompts) epochs")
    prompt_lr: float = setting(PROMPT_TRAINING.learning_rate, "stage-1 Adam learning rate")
    prompt_batch_size: int = setting(PROMPT_TRAINING.batch_size, "stage-1 batch size")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prompt_epoch < 1 or self.prompt_batch_size < 1:
            raise ValueError(f"need prompt_epoch >= 1 and prompt_batch_size >= 1, got {self.prompt_epoch}, "
                             f"{self.prompt_batch_size}")
