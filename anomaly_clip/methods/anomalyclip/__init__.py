"""AnomalyCLIP: object-agnostic prompts with deep text tokens, DPAM dual path, glocal loss."""
from ...engine.registry import register_method
from .config import AnomalyCLIPConfig, AnomalyCLIPTraining
from .flags import AnomalyCLIPFlags
from .model import AnomalyCLIP
from .training import train_anomalyclip

METHOD = register_method("anomalyclip", AnomalyCLIP, AnomalyCLIPFlags())

__all__ = ["AnomalyCLIP", "AnomalyCLIPConfig", "AnomalyCLIPTraining", "AnomalyCLIPFlags", "train_anomalyclip", "METHOD"]
