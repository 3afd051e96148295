"""CLIP-AC settings: those of the CLIP baselines
(:class:`~anomaly_clip.methods.components.config.CLIPBaselineConfig`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..components.config import CLIPBaselineConfig


@dataclass
class CLIPACConfig(CLIPBaselineConfig):
    """CLIP-AC (AnomalyCLIP appendix A.2): the CLIP baselines' defaults, written once in the parent."""


DEFAULTS = CLIPACConfig()
