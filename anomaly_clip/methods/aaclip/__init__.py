"""AA-CLIP: two-stage residual adapters (text, then image) with a disentangle loss."""
from ...engine.registry import register_method
from .config import AAClipConfig, AAClipTrainSettings, AdaptedImageConfig
from .flags import AAClipFlags, AdaptedImageFlags
from .model import (AAClipDetector, AdaptedImageDetector, disentangle_loss, fuse_class_scores, similarity_logits,
                    stage1_patch_features)
from .training import train_aaclip, train_image_stage, train_text_stage

METHOD = register_method("aaclip", AAClipDetector, AAClipFlags())

__all__ = ["AAClipConfig", "AAClipTrainSettings", "AdaptedImageConfig", "AAClipFlags", "AdaptedImageFlags",
           "AAClipDetector", "AdaptedImageDetector", "disentangle_loss", "fuse_class_scores", "similarity_logits",
           "stage1_patch_features", "train_aaclip", "train_image_stage", "train_text_stage", "METHOD"]
