"""AA-CLIP: two-stage residual adapters (text, then image) with a disentangle loss.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {"AAClipConfig": "config", "AAClipTraining": "config", "AdaptedImageConfig": "config",
            "ImageStageTraining": "config", "AAClipDetector": "model", "AdaptedImageDetector": "model",
            "disentangle_loss": "model", "fuse_class_scores": "model", "similarity_logits": "model",
            "stage1_patch_features": "model", "train": "training", "train_image_stage": "training",
            "train_text_stage": "training"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
