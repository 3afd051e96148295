"""WinCLIP / WinCLIP+: window-based zero- and few-shot anomaly detection (CVPR 2023), training-free.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"WinCLIPDetector": "model", "WinCLIPConfig": "config"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
