"""AnomalyCLIP: object-agnostic prompts with deep text tokens, DPAM dual path, glocal loss.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"AnomalyCLIP": "model", "AnomalyCLIPConfig": "config", "AnomalyCLIPTraining": "config",
            "PromptLearner": "prompts", "train": "training"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
