"""AnomalyCLIP prompts as the anchors of AA-CLIP's image adapters (beyond both papers).

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"PromptAdapterConfig": "config", "PromptAdapterTraining": "config", "PromptAdapterDetector": "model",
            "train": "training"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
