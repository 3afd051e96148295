"""anomaly_clip: zero-shot anomaly detection with CLIP — AnomalyCLIP and AA-CLIP, faithful and fast.

Typical use::

    import anomaly_clip
    model = anomaly_clip.load("checkpoints/epoch_15.pth")
    scores, maps = model.predict_paths(["part.png"])
"""
from . import methods  # noqa: F401 - registers the built-in methods
from .backbone import BackboneConfig, CLIPBackbone, WeightsNotFoundError, load_backbone
from .checkpoint import load, save_checkpoint
from .detector import METHODS, AnomalyDetector, Prediction, get_method
from .dpam import DPAMConfig, encode_image

__version__ = "0.1.0"

__all__ = [
    "AnomalyDetector", "BackboneConfig", "CLIPBackbone", "DPAMConfig", "METHODS", "Prediction",
    "WeightsNotFoundError", "encode_image", "get_method", "load", "load_backbone", "save_checkpoint",
]
