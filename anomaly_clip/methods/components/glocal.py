"""AnomalyCLIP's scoring and glocal loss as functions, and the base of every method scored that way.

AnomalyCLIP (official ``test.py`` / ``train.py`` of zqhang/AnomalyCLIP) scores an image by
comparing unit image features with a normal and an abnormal unit text feature:

* image score: ``softmax(cos(global, [t_n, t_a]) / T)[abnormal]``;
* per chosen block: patch probabilities ``softmax(cos(patch, [t_n, t_a]) / T)``, class token
  dropped, reshaped to the grid, upsampled bilinearly (corners not aligned) to the image; the
  block's map is ``(p_a + 1 - p_n) / 2``; maps are summed over blocks and Gaussian-filtered
  (scipy rules, sigma 4);
* glocal loss: ``CE(global logits, label) + lambda * sum over blocks of [focal + Dice(p_a, mask)
  + Dice(p_n, 1 - mask)]``.

AnomalyCLIP (T = 0.07, DPAM dual path, learnt prompts), CoOp (T = 0.07, learnt context, plain
CLIP features) and the CLIP / CLIP-AC baselines (T = 1/100, CLIP's logit scale, fixed prompts,
plain CLIP features) differ only in where their text features and image features come from, so
they share :class:`GlocalDetector`.
"""
from __future__ import annotations

from abc import abstractmethod
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...clip.backbone import CLIPBackbone
from ...clip.dpam import DPAMConfig, encode_image, patch_grid
from ...engine.config import MethodConfig
from ...engine.detector import AnomalyDetector, PatchFeatures, Prediction
from ...engine.losses import classification_loss, multi_level_segmentation_loss
from ...engine.precision import float32_einsum
from ...engine.smoothing import gaussian_filter


def glocal_image_features(backbone: CLIPBackbone, images: torch.Tensor, layers: Sequence[int],
                          dpam: Optional[DPAMConfig] = None) -> Dict[str, torch.Tensor]:
    """Unit global embedding ``"global"`` (B, E) and unit projected tokens ``"patches"``
    (B, L, 1+N, E) of the 1-based blocks ``layers`` (``ln_post`` then ``proj``; class token first).

    Without DPAM the global embedding is CLIP's own (``ln_post(CLS) @ proj``) and the tokens are
    the residual stream after each block; with DPAM see :func:`anomaly_clip.clip.dpam.encode_image`.
    """
    visual = encode_image(backbone, images, layers, dpam)
    patches = torch.stack([backbone.project_tokens(visual.layer_tokens[layer]) for layer in layers], dim=1)
    return {"global": F.normalize(visual.global_embedding, dim=-1), "patches": F.normalize(patches, dim=-1)}


def image_logits(global_features: torch.Tensor, text_rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, 2) normal/abnormal logits ``cos / T`` of unit (B, E) features and unit (B, 2, E) text rows."""
    return float32_einsum("be,bce->bc", global_features, text_rows) / temperature


def layer_probabilities(patches: torch.Tensor, text_rows: torch.Tensor, temperature: float,
                        size: int) -> torch.Tensor:
    """(B, L, 2, S, S) normal/abnormal patch probabilities of unit tokens (B, L, 1+N, E), class
    token dropped, upsampled bilinearly (corners not aligned) to ``size``."""
    batch, levels = patches.shape[:2]
    grid = patch_grid(patches[:, 0])
    logits = float32_einsum("blne,bce->blnc", patches, text_rows) / temperature
    probabilities = logits.softmax(dim=-1)[:, :, 1:]
    probabilities = probabilities.permute(0, 1, 3, 2).reshape(batch * levels, 2, *grid)
    upsampled = F.interpolate(probabilities, size=(size, size), mode="bilinear", align_corners=False)
    return upsampled.reshape(batch, levels, 2, size, size)


def glocal_maps(probabilities: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, S, S) anomaly maps: ``(p_a + 1 - p_n) / 2`` summed over the L blocks of (B, L, 2, S, S)
    probabilities, then Gaussian-filtered (``sigma`` 0 = none); values in [0, L] before filtering."""
    maps = ((probabilities[:, :, 1] + 1 - probabilities[:, :, 0]) / 2).sum(dim=1)
    return gaussian_filter(maps, sigma)


def glocal_patch_maps(grid_maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, L, h, w) per-block grid maps -> (B, S, S): bilinear upsampling, sum over blocks and the
    Gaussian filter, as :func:`glocal_maps` treats the text maps."""
    upsampled = F.interpolate(grid_maps.float(), size=(size, size), mode="bilinear", align_corners=False)
    return gaussian_filter(upsampled.sum(dim=1), sigma)


def glocal_loss(features: Dict[str, torch.Tensor], text_rows: torch.Tensor, labels: torch.Tensor,
                masks: torch.Tensor, temperature: float, seg_loss_weight: float) -> Dict[str, torch.Tensor]:
    """AnomalyCLIP's training loss on :func:`glocal_image_features` output.

    ``"image_loss"`` = CE of :func:`image_logits` against ``labels`` (B,); with a non-zero
    ``seg_loss_weight`` also ``"seg_loss"`` = weight x sum over blocks of focal + Dice(p_a, mask) +
    Dice(p_n, 1 - mask) on the masks (B, 1, S, S) binarised at 0.5; ``"loss"`` is the total.
    """
    losses = {"image_loss": classification_loss(image_logits(features["global"], text_rows, temperature), labels)}
    if seg_loss_weight:
        size = masks.shape[-1]
        probabilities = layer_probabilities(features["patches"], text_rows, temperature, size)
        binary = (masks.reshape(masks.shape[0], size, size) > 0.5).float()
        losses["seg_loss"] = seg_loss_weight * multi_level_segmentation_loss(probabilities.unbind(dim=1), binary)
    losses["loss"] = sum(losses.values())
    return losses


def glocal_feature_bytes(backbone: CLIPBackbone, layers: int) -> int:
    """Bytes per training sample of cached :func:`glocal_image_features` (float32) plus its mask."""
    grid = backbone.grid_size()
    tokens = 1 + grid[0] * grid[1]
    size = backbone.config.image_size
    return 4 * backbone.embed_dim * (1 + layers * tokens) + size * size + 16


class GlocalDetector(AnomalyDetector):
    """A method scored as AnomalyCLIP is (module docstring): subclasses give the text rows.

    The config needs ``features_list`` (1-based blocks; empty = the last block), ``temperature``,
    ``sigma`` and ``seg_loss_weight``; :meth:`dpam_config` says how the image tower runs.
    """

    def __init__(self, backbone: CLIPBackbone, config: MethodConfig):
        super().__init__(backbone, config)
        blocks = backbone.num_visual_blocks
        self.layers: Tuple[int, ...] = tuple(config.features_list) or (blocks,)
        bad = [layer for layer in self.layers if not 1 <= layer <= blocks]
        if bad:
            raise ValueError(f"features_list {list(self.layers)} names blocks outside 1..{blocks} of "
                             f"{backbone.config.model_name}")

    def dpam_config(self) -> Optional[DPAMConfig]:
        """How the image tower runs: None = plain CLIP (the default)."""
        return None

    @abstractmethod
    def text_rows(self, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) unit [normal, abnormal] text features of each image of a batch."""

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Frozen image features of :func:`glocal_image_features` (no gradients: CLIP is frozen)."""
        return glocal_image_features(self.backbone, images, self.layers, self.dpam_config())

    def image_logits(self, global_features: torch.Tensor, text_rows: torch.Tensor) -> torch.Tensor:
        """(B, 2) normal/abnormal logits: cosine similarity / temperature."""
        return image_logits(global_features, text_rows, self.config.temperature)

    def layer_probabilities(self, patches: torch.Tensor, text_rows: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, 2, S, S) per-layer normal/abnormal patch probabilities upsampled to the image."""
        return layer_probabilities(patches, text_rows, self.config.temperature, size)

    def _layer_patches(self, features: Dict[str, torch.Tensor]) -> PatchFeatures:
        patches = features["patches"][:, :, 1:]
        return {layer: patches[:, index] for index, layer in enumerate(self.layers)}

    @torch.no_grad()
    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """Scores (B,) = abnormal probability in [0, 1]; maps (B, S, S) = per-layer
        ``(p_abnormal + 1 - p_normal) / 2`` summed over the layers, so in [0, layers], filtered."""
        self.check_images(images, class_names)
        features = self.image_features(images)
        rows = self.text_rows(class_names, images.shape[0])
        scores = self.image_logits(features["global"], rows).softmax(dim=-1)[:, 1]
        maps = glocal_maps(self.layer_probabilities(features["patches"], rows, images.shape[-1]), self.config.sigma)
        return Prediction(scores=scores.float(), maps=maps.float()), self._layer_patches(features)

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        return self._layer_patches(self.image_features(images))

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """Bilinear upsampling per layer, sum over layers, Gaussian filter (as :meth:`forward`)."""
        return glocal_patch_maps(grid_maps, size, self.config.sigma)

    def glocal_loss(self, features: Dict[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
                    class_names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """CE on the global embedding + ``seg_loss_weight`` x per-layer focal + two Dice terms."""
        rows = self.text_rows(class_names, labels.shape[0])
        return glocal_loss(features, rows, labels, masks, self.config.temperature, self.config.seg_loss_weight)

    def feature_bytes(self) -> int:
        """Bytes per training sample of cached image features (see the frozen-feature trainer)."""
        return glocal_feature_bytes(self.backbone, len(self.layers))
