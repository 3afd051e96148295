"""CoOp: learnable context before "normal/anomalous [cls]", AnomalyCLIP's baseline (appendix A.2).

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"CoOpDetector": "model", "CoOpConfig": "config", "train": "training"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
