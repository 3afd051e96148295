"""CLIP-AC: training-free baseline of AnomalyCLIP's Tables 1-2 (appendix A.2), CLIP with the
ImageNet template ensemble.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"CLIPACDetector": "model", "CLIPACConfig": "config"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
