"""Frozen CLIP and DPAM: what every method reads, knowing nothing of any method.

Names load on first use, so :mod:`.config` imports without torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {"BackboneConfig": "config", "CLIPBackbone": "backbone", "InvalidWeightsError": "weights",
            "WeightsNotFoundError": "weights", "load_backbone": "backbone", "DPAMConfig": "dpam",
            "VisualFeatures": "dpam", "encode_image": "dpam"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
