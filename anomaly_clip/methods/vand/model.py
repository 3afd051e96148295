"""APRIL-GAN (VAND 2023 challenge, Chen et al.), the official code's computation.

A frozen CLIP; one trained ``Linear(width, embed)`` per chosen block maps that block's raw
residual-stream patch tokens (no ``ln_post``, no ``proj``) into the text space, where they are
compared with each class's normal and abnormal text features (state x template ensemble). The
few-shot variant adds, per block, each patch's nearest-neighbour cosine distance to the raw tokens
of normal reference images. Source files: ``test.py``, ``train.py``, ``model.py``,
``prompt_ensemble.py`` and ``few_shot.py`` of ByChelsea/VAND-APRIL-GAN.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...clip.backbone import CLIPBackbone
from ...clip.dpam import encode_image
from ...engine.detector import AnomalyDetector, PatchFeatures, Prediction
from ...engine.losses import dice_loss, focal_loss
from ...engine.precision import float32_einsum
from ...engine.references import nearest_distances
from ..components.prompts import VAND_PROMPTS, ClassAwareText, EnsembleTextFeatures
from . import official
from .config import VANDConfig

logger = logging.getLogger(__name__)


class LinearLayers(nn.Module):
    """One ``Linear(width, embed)`` (with bias) per feature block; parameter names ``fc.<i>.*``
    are those of the official ``LinearLayer``, so its state dicts load unchanged."""

    def __init__(self, width: int, embed_dim: int, count: int):
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(width, embed_dim) for _ in range(count)])

    def forward(self, tokens: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Unit (B, N, E) text-space features of each block's (B, N, width) patch tokens."""
        return [F.normalize(layer(t), dim=-1) for layer, t in zip(self.fc, tokens)]


def grid_logits(features: torch.Tensor, text: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """``scale * cos`` of unit patch features (B, N, E) with unit text rows (B, 2, E), as a (B, 2)
    channel map upsampled bilinearly with aligned corners to ``size``: (B, 2, S, S), float32."""
    batch, patches, _ = features.shape
    side = int(round(patches ** 0.5))
    if side * side != patches:
        raise ValueError(f"{patches} patch tokens do not form a square grid")
    logits = scale * float32_einsum("bne,bce->bcn", features, text)
    return F.interpolate(logits.reshape(batch, 2, side, side), size=(size, size), mode="bilinear",
                         align_corners=True)


def segmentation_probabilities(features: Sequence[torch.Tensor], text: torch.Tensor, scale: float,
                               size: int) -> List[torch.Tensor]:
    """Per block (B, 2, S, S) [normal, abnormal] probabilities: softmax over the upsampled logits."""
    return [grid_logits(f, text, scale, size).softmax(dim=1) for f in features]


def zero_shot_maps(features: Sequence[torch.Tensor], text: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """(B, S, S) zero-shot maps: the abnormal probability of each block, summed (range 0..blocks)."""
    return torch.stack([p[:, 1] for p in segmentation_probabilities(features, text, scale, size)]).sum(dim=0)


def memory_maps(tokens: Sequence[torch.Tensor], memory: Sequence[torch.Tensor], size: int) -> torch.Tensor:
    """(B, S, S) few-shot maps of one class's images: per block the nearest-neighbour distance
    ``min over memory of (1 - cos)`` of each raw patch token (B, N, W) to the block's unit memory
    (M, W), upsampled bilinearly with aligned corners, summed over blocks."""
    total = None
    for queries, bank in zip(tokens, memory):
        batch, patches, width = queries.shape
        side = int(round(patches ** 0.5))
        distances = nearest_distances(F.normalize(queries.reshape(-1, width).float(), dim=-1), bank)
        upsampled = F.interpolate(distances.view(batch, 1, side, side), size=(size, size), mode="bilinear",
                                  align_corners=True)[:, 0]
        total = upsampled if total is None else total + upsampled
    return total


def segmentation_loss(probabilities: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """The official training loss: per block focal loss on the (B, 2, S, S) probabilities plus
    the Dice loss of the abnormal channel against the binary masks (B, 1, S, S); summed."""
    target = masks.reshape(masks.shape[0], *probabilities[0].shape[-2:])
    return sum(focal_loss(p, target) + dice_loss(p[:, 1], target) for p in probabilities)


def min_max(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``(values - low) / (high - low)`` (the official ``normalize``; a zero span gives 0)."""
    return ((values - low) / (high - low)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


class VANDDetector(ClassAwareText, AnomalyDetector):
    """Frozen CLIP + APRIL-GAN's linear layers; the few-shot memory once references are set."""

    config_class = VANDConfig
    associates_references = True
    few_shot_score_needs_calibration = True

    def __init__(self, backbone: CLIPBackbone, config: VANDConfig):
        super().__init__(backbone, config)
        blocks = backbone.num_visual_blocks
        bad = [layer for layer in config.features_list + config.memory_layers if layer > blocks]
        if bad:
            raise ValueError(f"blocks {sorted(set(bad))} exceed the {blocks} visual blocks of "
                             f"{backbone.config.model_name}")
        self.linear_layers = LinearLayers(backbone.vision_width, backbone.embed_dim,
                                          len(config.features_list)).to(backbone.device)
        self.text = EnsembleTextFeatures(VAND_PROMPTS, normalize=True).to(backbone.device)
        self.references: Optional[Mapping[str, Mapping[int, torch.Tensor]]] = None
        self.reference_weight = 0.5

    # ---- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Frozen features: ``"global"`` (B, E) unit ``ln_post(CLS) @ proj``, and ``"tokens_<l>"``
        (B, N, width) raw residual-stream patch tokens after block l (class token dropped)."""
        layers = sorted(set(self.config.features_list + self.config.memory_layers))
        visual = encode_image(self.backbone, images, layers)
        features = {"global": F.normalize(visual.global_embedding, dim=-1)}
        features.update({f"tokens_{layer}": visual.layer_tokens[layer][:, 1:] for layer in layers})
        return features

    def text_features(self, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) unit [normal, abnormal] features of each image's class, computed once per class
        (a non-persistent buffer: the text side is not trained)."""
        return self.text(self.backbone, class_names, batch, self.default_class_name)

    def projected(self, features: Mapping[str, torch.Tensor]) -> List[torch.Tensor]:
        """Unit text-space patch features (B, N, E) of each feature block (differentiable)."""
        return self.linear_layers([features[f"tokens_{layer}"] for layer in self.config.features_list])

    # ---- references ----------------------------------------------------------------------------
    def _memory_rows(self, features: Mapping[str, torch.Tensor]) -> PatchFeatures:
        return {layer: features[f"tokens_{layer}"] for layer in self.config.memory_layers}

    def reference_features(self, images: torch.Tensor) -> PatchFeatures:
        """The few-shot memory's rows: raw patch tokens (B, N, width) per memory block."""
        return self._memory_rows(self.encode(images))

    def set_references(self, features: Optional[Mapping[str, Mapping[int, torch.Tensor]]],
                       weight: float = 0.5) -> None:
        """Few-shot memory per class (unit raw tokens per block) and the fusion weight: map =
        ``2 * ((1 - w) * zero_shot + w * few_shot)``, the official sum at the default w = 0.5."""
        if features is not None:
            for name, keyed in features.items():
                if set(keyed) != set(self.config.memory_layers):
                    raise ValueError(f"references of class {name!r} hold blocks {sorted(keyed)}, this model's memory "
                                     f"uses {list(self.config.memory_layers)}")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the reference weight must lie in [0, 1], got {weight}")
        self.references, self.reference_weight = features, weight

    def _memory_maps(self, features: Mapping[str, torch.Tensor], class_names: Sequence[str], size: int) -> torch.Tensor:
        references = self.references
        missing = sorted(set(class_names) - set(references))
        if missing:
            raise ValueError(f"no reference images for classes {missing}; the references hold {sorted(references)}")
        maps = torch.empty(len(class_names), size, size, device=features["global"].device)
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, n in enumerate(class_names) if n == name], device=maps.device)
            tokens = [features[f"tokens_{layer}"][rows] for layer in self.config.memory_layers]
            maps[rows] = memory_maps(tokens, [references[name][layer] for layer in self.config.memory_layers], size)
        return maps

    # ---- scoring -------------------------------------------------------------------------------
    @torch.no_grad()
    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """Scores (B,) ``softmax(100 * global . text)[abnormal]`` in [0, 1]; maps (B, S, S) the
        abnormal probabilities summed over blocks (0..blocks), plus the few-shot memory maps when
        references are set (then see :meth:`class_image_scores` for the image score); the
        features are the raw tokens of :meth:`reference_features`."""
        self.check_images(images, class_names)
        size = images.shape[-1]
        features = self.encode(images)
        text = self.text_features(class_names, images.shape[0])
        scale = self.config.logit_scale
        scores = (scale * float32_einsum("be,bce->bc", features["global"], text)).softmax(dim=-1)[:, 1]
        maps = zero_shot_maps(self.projected(features), text, scale, size)
        if self.references is not None:
            names = class_names
            if names is None:
                if len(self.references) != 1:
                    raise ValueError(f"the references hold several classes {sorted(self.references)}; "
                                     "name each image's class")
                names = [next(iter(self.references))] * images.shape[0]
            weight = self.reference_weight
            maps = 2 * ((1 - weight) * maps + weight * self._memory_maps(features, names, size))
        return Prediction(scores=scores.float(), maps=maps.float()), self._memory_rows(features)

    def class_image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                           map_floors: torch.Tensor) -> torch.Tensor:
        """Zero-shot: the text probability. Few-shot (references set): the official
        ``0.5 * (text probability + max of the map min-max normalised over the class)``."""
        if self.references is None:
            return scores
        peaks = map_peaks.double()
        return (0.5 * (scores.double() + min_max(peaks, peaks.min(), peaks.max()))).to(scores.dtype)

    def score_statistics(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                         map_floors: torch.Tensor) -> Dict[str, float]:
        """Few-shot: the range of the map maxima on the calibration images (fixed afterwards)."""
        if self.references is None:
            return {}
        return {"peak_low": float(map_peaks.min()), "peak_high": float(map_peaks.max())}

    def image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                     statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor:
        """Per-image few-shot score with the calibration's fixed range in place of each class's
        min/max; zero-shot (or without statistics) the text probability."""
        if self.references is None or not statistics or "peak_low" not in statistics:
            return scores
        low, high = (torch.tensor(statistics[k], dtype=torch.float64) for k in ("peak_low", "peak_high"))
        return (0.5 * (scores.double() + min_max(map_peaks.double(), low, high))).to(scores.dtype)

    # ---- training ------------------------------------------------------------------------------
    def training_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Frozen inputs of the loss: the raw tokens of the feature blocks (cacheable across epochs)."""
        features = self.encode(images)
        return {f"tokens_{layer}": features[f"tokens_{layer}"] for layer in self.config.features_list}

    def segmentation_loss(self, features: Mapping[str, torch.Tensor], labels: torch.Tensor, masks: torch.Tensor,
                          class_names: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Focal + Dice over the feature blocks (no image-level term: the official loop trains none)."""
        text = self.text_features(class_names, labels.shape[0])
        probabilities = segmentation_probabilities(self.projected(features), text, self.config.logit_scale,
                                                   masks.shape[-1])
        return {"loss": segmentation_loss(probabilities, masks)}

    def feature_bytes(self) -> int:
        """Bytes per training sample of cached raw tokens (float32) plus its mask."""
        grid = self.backbone.grid_size()
        size = self.image_size
        return 4 * self.backbone.vision_width * grid[0] * grid[1] * len(self.config.features_list) + size * size + 16

    # ---- checkpoints ---------------------------------------------------------------------------
    @classmethod
    def read_official_checkpoint(cls, path: str, contents: Optional[Dict[str, Any]] = None
                                 ) -> Optional[Dict[str, Any]]:
        return official.recognise(contents)

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.linear_layers.load_state_dict(official.projection_state(checkpoint, self.linear_layers.state_dict()))

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        return official.checkpoint_files(self.linear_layers.state_dict(), epoch)
