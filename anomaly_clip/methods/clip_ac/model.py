"""CLIP-AC (AnomalyCLIP appendix A.2), training-free: each state ("normal [cls]", "anomalous
[cls]") in each of the 80 ImageNet templates of the CLIP paper, the sentence embeddings of a state
normalised, averaged and normalised again.

Scoring and maps: :class:`~anomaly_clip.methods.components.clip_baseline.CLIPBaseline`.
"""
from __future__ import annotations

from ..components.clip_baseline import CLIPBaseline
from ..components.prompts import CLIP_AC_PROMPTS
from .config import CLIPACConfig


class CLIPACDetector(CLIPBaseline):
    """Frozen CLIP scored against the CLIP-AC prompts."""

    config_class = CLIPACConfig
    prompts = CLIP_AC_PROMPTS
