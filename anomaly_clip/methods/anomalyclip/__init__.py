"""AnomalyCLIP: object-agnostic prompts with deep text tokens, DPAM dual path, glocal loss.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {"AnomalyCLIP": "model", "AnomalyCLIPConfig": "config", "AnomalyCLIPTraining": "config",
            "PromptLearner": "prompts", "train": "training"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
