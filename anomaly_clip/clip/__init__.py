"""Frozen CLIP and DPAM: what every method reads, knowing nothing of any method."""
from .backbone import BackboneConfig, CLIPBackbone, InvalidWeightsError, WeightsNotFoundError, load_backbone
from .dpam import DPAMConfig, VisualFeatures, encode_image

__all__ = ["BackboneConfig", "CLIPBackbone", "InvalidWeightsError", "WeightsNotFoundError", "load_backbone",
           "DPAMConfig", "VisualFeatures", "encode_image"]
