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
    "BackboneConfig": "clip.backbone", "CLIPBackbone": "clip.backbone", "WeightsNotFoundError": "clip.backbone",
    "InvalidWeightsError": "clip.backbone",
    "load_backbone": "clip.backbone", "DPAMConfig": "clip.dpam", "encode_image": "clip.dpam",
    "AnomalyDetector": "engine.detector", "Prediction": "engine.detector", "save_checkpoint": "engine.checkpoint",
    "evaluate": "engine.evaluation", "load": "methods", "get_method": "methods", "METHODS": "methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anomaly_clip' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
