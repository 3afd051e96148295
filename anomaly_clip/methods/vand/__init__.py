"""APRIL-GAN (VAND 2023): linear projections of intermediate patch tokens onto state/template
prompts, focal + Dice training, and a few-shot memory of normal tokens.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"VANDDetector": "model", "VANDConfig": "config", "VANDTraining": "config", "train": "training"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
