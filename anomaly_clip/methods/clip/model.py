"""CLIP (AnomalyCLIP appendix A.2), training-free: two class-aware prompts, "A photo of a normal
[cls]." and "A photo of an anomalous [cls]."

Scoring and maps: :class:`~anomaly_clip.methods.components.clip_baseline.CLIPBaseline`.
"""
from __future__ import annotations

from ..components.clip_baseline import CLIPBaseline
from ..components.prompts import CLIP_PROMPTS
from .config import CLIPConfig


class CLIPDetector(CLIPBaseline):
    """Frozen CLIP scored against the CLIP prompts."""

    config_class = CLIPConfig
    prompts = CLIP_PROMPTS
