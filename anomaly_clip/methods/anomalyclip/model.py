"""AnomalyCLIP: object-agnostic prompts + DPAM dual path + glocal loss (reference-code behaviour)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...clip.backbone import CLIPBackbone
from ...clip.dpam import DPAMConfig, encode_image, patch_grid
from ...engine.detector import AnomalyDetector, PatchFeatures, Prediction
from ...engine.losses import classification_loss, multi_level_segmentation_loss
from ...engine.precision import float32_einsum
from ...engine.smoothing import gaussian_filter
from . import official
from .config import AnomalyCLIPConfig
from .prompts import AGNOSTIC_CLASS, PromptLearner

logger = logging.getLogger(__name__)


class AnomalyCLIP(AnomalyDetector):
    """Frozen CLIP with DPAM plus a trainable :class:`PromptLearner`.

    ``object_classes`` empty means object-agnostic prompts (the method); class names give the
    paper's object-aware ablation.
    """

    config_class = AnomalyCLIPConfig

    def __init__(self, backbone: CLIPBackbone, config: AnomalyCLIPConfig):
        super().__init__(backbone, config)
        self.prompt_learner = PromptLearner(
            backbone, n_ctx=config.n_ctx, depth=config.depth, t_n_ctx=config.t_n_ctx,
            class_names=config.object_classes or (AGNOSTIC_CLASS,),
            half_precision_deep_tokens=config.half_precision_deep_tokens,
            unused_projection_dim=config.unused_projection_dim,
        ).to(backbone.device)
        self.dpam = DPAMConfig(dpam_layers=config.dpam_layers, attention=config.dpam_attention, structure="dual")
        self.register_buffer("frozen_text_features", torch.empty(0, device=backbone.device), persistent=False)

    def text_parts_changed(self) -> None:
        """Recompute :attr:`frozen_text_features` from the prompts (dropped while training)."""
        if self.training:
            self.frozen_text_features = torch.empty(0, device=self.device)
            return
        with torch.no_grad():
            self.frozen_text_features = self.prompt_learner(self.backbone).detach()

    def text_features(self) -> torch.Tensor:
        """(n_cls, 2, E) normalised [normal, abnormal] features: computed from the prompts while
        training or with gradients, else the buffer :attr:`frozen_text_features`."""
        if self.training or torch.is_grad_enabled():
            return self.prompt_learner(self.backbone)
        if self.frozen_text_features.numel() == 0:
            self.text_parts_changed()
        return self.frozen_text_features

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalised global embedding (B, E) and projected patch tokens (B, L, 1+N, E)."""
        visual = encode_image(self.backbone, images, self.config.features_list, self.dpam)
        patches = torch.stack([self.backbone.project_tokens(visual.layer_tokens[layer])
                               for layer in self.config.features_list], dim=1)
        return {"global": F.normalize(visual.global_embedding, dim=-1), "patches": F.normalize(patches, dim=-1)}

    def class_key(self, class_name: Optional[str]) -> Optional[str]:
        """None for object-agnostic prompts; with ``object_classes`` the class whose prompts score
        the image (the first for ``None``)."""
        names = self.prompt_learner.class_names
        if len(names) == 1:
            return None
        return class_name.replace("_", " ") if class_name else names[0]

    def _text_rows(self, text: torch.Tensor, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) text features of each image: the one object-agnostic pair broadcast (any batch
        size, also when traced), or each class's pair."""
        if class_names is None or text.shape[0] == 1:
            return text[:1].expand(batch, -1, -1)
        return text[self.prompt_learner.class_index(class_names, batch, text.device)]

    def image_logits(self, global_features: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        """(B, 2) normal/abnormal logits: cosine similarity / temperature."""
        return float32_einsum("be,bce->bc", global_features, text_rows) / self.config.temperature

    def layer_probabilities(self, patches: torch.Tensor, text_rows: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, 2, S, S) per-layer normal/abnormal patch probabilities upsampled to the image."""
        batch, levels = patches.shape[:2]
        grid = patch_grid(patches[:, 0])
        logits = float32_einsum("blne,bce->blnc", patches, text_rows) / self.config.temperature
        probabilities = logits.softmax(dim=-1)[:, :, 1:]
        probabilities = probabilities.permute(0, 1, 3, 2).reshape(batch * levels, 2, *grid)
        upsampled = F.interpolate(probabilities, size=(size, size), mode="bilinear", align_corners=False)
        return upsampled.reshape(batch, levels, 2, size, size)

    def _layer_patches(self, features: Dict[str, torch.Tensor]) -> PatchFeatures:
        patches = features["patches"][:, :, 1:]
        return {layer: patches[:, index] for index, layer in enumerate(self.config.features_list)}

    @torch.no_grad()
    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """Scores (B,) = abnormal probability in [0, 1]; maps (B, S, S) = per-layer
        ``(p_abnormal + 1 - p_normal) / 2`` summed over ``features_list``, so in [0, layers]."""
        self.check_images(images, class_names)
        features = self.image_features(images)
        text_rows = self._text_rows(self.text_features(), class_names, images.shape[0])
        scores = self.image_logits(features["global"], text_rows).softmax(dim=-1)[:, 1]
        probabilities = self.layer_probabilities(features["patches"], text_rows, images.shape[-1])
        maps = ((probabilities[:, :, 1] + 1 - probabilities[:, :, 0]) / 2).sum(dim=1)
        maps = gaussian_filter(maps, self.config.sigma)
        return Prediction(scores=scores.float(), maps=maps.float()), self._layer_patches(features)

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        return self._layer_patches(self.image_features(images))

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """Bilinear upsampling per layer, sum over layers, Gaussian filter (as :meth:`predict`)."""
        upsampled = F.interpolate(grid_maps.float(), size=(size, size), mode="bilinear", align_corners=False)
        return gaussian_filter(upsampled.sum(dim=1), self.config.sigma)

    def glocal_loss(self, features: Dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
                    class_names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """CE on the global embedding + ``seg_loss_weight`` x per-layer focal + two Dice terms."""
        text_rows = self._text_rows(self.text_features(), class_names, labels.shape[0])
        image_loss = classification_loss(self.image_logits(features["global"], text_rows), labels)
        losses = {"image_loss": image_loss}
        if self.config.seg_loss_weight:
            size = masks.shape[-1]
            probabilities = self.layer_probabilities(features["patches"], text_rows, size)
            binary = (masks.reshape(masks.shape[0], size, size) > 0.5).float()
            seg = multi_level_segmentation_loss(probabilities.unbind(dim=1), binary)
            losses["seg_loss"] = self.config.seg_loss_weight * seg
        losses["loss"] = sum(losses.values())
        return losses

    @classmethod
    def read_official_checkpoint(cls, path: str, contents: Optional[Dict[str, Any]] = None
                                 ) -> Optional[Dict[str, Any]]:
        return official.recognise(contents)

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.prompt_learner.load_state_dict(official.prompt_state(checkpoint, self.prompt_learner.state_dict()))
        self.text_parts_changed()

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        return official.checkpoint_files(self.prompt_learner.state_dict(), epoch)
