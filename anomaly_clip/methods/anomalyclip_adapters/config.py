"""Settings of the hybrid method; the prompt shape defaults are AnomalyCLIP's own."""
from __future__ import annotations

from dataclasses import dataclass

from ..aaclip.config import AdaptedImageConfig
from ..anomalyclip.config import DEFAULTS as PROMPT_DEFAULTS

PROMPT_FIELDS = ("n_ctx", "depth", "t_n_ctx", "half_precision_deep_tokens", "unused_projection_dim")


@dataclass
class PromptAdapterConfig(AdaptedImageConfig):
    """AA-CLIP image side plus the shape of AnomalyCLIP's object-agnostic prompt learner."""

    n_ctx: int = PROMPT_DEFAULTS.n_ctx
    depth: int = PROMPT_DEFAULTS.depth
    t_n_ctx: int = PROMPT_DEFAULTS.t_n_ctx
    half_precision_deep_tokens: bool = PROMPT_DEFAULTS.half_precision_deep_tokens
    unused_projection_dim: int = PROMPT_DEFAULTS.unused_projection_dim
