"""AA-CLIP: two-stage residual adapters (text, then image) with a disentangle loss.

Names load on first use, so the settings (:mod:`.config`) import without torch.
"""
from ...lazy import lazy_exports

_EXPORTS = {"AAClipConfig": "config", "AAClipTraining": "config", "AdaptedImageConfig": "config",
            "ImageStageTraining": "config", "AAClipDetector": "model", "AdaptedImageDetector": "model",
            "disentangle_loss": "model", "fuse_class_scores": "model", "similarity_logits": "model",
            "stage1_patch_features": "model", "train": "training", "train_image_stage": "training",
            "train_text_stage": "training"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
