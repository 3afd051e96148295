"""Frozen CLIP and DPAM: what every method reads, knowing nothing of any method.

Names load on first use, so :mod:`.config` imports without torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {"BackboneConfig": "config", "CLIPBackbone": "backbone", "InvalidWeightsError": "weights",
            "WeightsNotFoundError": "weights", "load_backbone": "backbone", "DPAMConfig": "dpam",
            "VisualFeatures": "dpam", "encode_image": "dpam"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
