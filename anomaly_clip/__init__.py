"""anomaly_clip: zero-shot anomaly detection with CLIP — AnomalyCLIP and AA-CLIP, faithful and fast.

Typical use::

    import anomaly_clip
    model = anomaly_clip.load("checkpoints/epoch_15.pth")
    scores, maps = model.predict_paths(["part.png"])

Names are imported on first use, so ``python -m anomaly_clip.data...`` starts without building
the model code.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BackboneConfig": "backbone", "CLIPBackbone": "backbone", "WeightsNotFoundError": "backbone",
    "load_backbone": "backbone", "load": "checkpoint", "save_checkpoint": "checkpoint",
    "METHODS": "detector", "AnomalyDetector": "detector", "Prediction": "detector", "get_method": "detector",
    "DPAMConfig": "dpam", "encode_image": "dpam", "evaluate": "evaluation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_clip' has no attribute {name!r}")
    module = import_module(f".{_EXPORTS[name]}", __name__)
    if name in ("load", "get_method", "METHODS"):
        import_module(".methods", __name__)
    return getattr(module, name)
