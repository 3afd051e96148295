"""AnomalyCLIP prompts as the anchors of AA-CLIP's image adapters (beyond both papers)."""
from ...engine.registry import register_method
from .config import PromptAdapterConfig
from .flags import PromptAdapterFlags
from .model import PromptAdapterDetector

METHOD = register_method("anomalyclip_adapters", PromptAdapterDetector, PromptAdapterFlags())

__all__ = ["PromptAdapterConfig", "PromptAdapterDetector", "PromptAdapterFlags", "METHOD"]
