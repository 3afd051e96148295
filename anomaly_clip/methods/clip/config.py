"""CLIP settings: those of the CLIP baselines
(:class:`~anomaly_clip.methods.components.config.CLIPBaselineConfig`)."""
from __future__ import annotations

from dataclasses import dataclass

from ..components.config import CLIPBaselineConfig


@dataclass
class CLIPConfig(CLIPBaselineConfig):
    """CLIP (AnomalyCLIP appendix A.2): the CLIP baselines' defaults, written once in the parent."""


DEFAULTS = CLIPConfig()
