"""WinCLIP and WinCLIP+ (Jeong et al., CVPR 2023), training-free, as anomalib computes them.

Zero-shot: the compositional prompt ensemble gives each class a normal and an anomalous text
feature; the image score compares CLIP's image embedding with them; the map compares the
embeddings of sliding windows of 2 x 2 and 3 x 3 patches (each window its own sequence through
the image tower) and aggregates them per patch harmonically, with the image score as a third
scale. WinCLIP+ adds ``k`` normal reference images per class: each test patch token and window
embedding is associated with its nearest reference of the same scale. Formulas:
:mod:`.windows`; where this differs from anomalib: ``docs/baselines.md``.
"""
from __future__ import annotations

import logging
from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...clip.backbone import CLIPBackbone
from ...engine.detector import AnomalyDetector, PatchFeatures, Prediction
from ..components.prompts import WINCLIP_PROMPTS, ClassAwareText, EnsembleTextFeatures
from .config import WinCLIPConfig
from .windows import (FULL_SCALE, abnormal_probability, few_shot_grid, pooled_embedding, run_image_tower,
                      window_coverings, window_embeddings, zero_shot_grid)

logger = logging.getLogger(__name__)

WinCLIPFeatures = Dict[str, torch.Tensor]


class WinCLIPDetector(ClassAwareText, AnomalyDetector):
    """Frozen CLIP with WinCLIP's prompts and windows; WinCLIP+ once references are set.

    Window indices and coverage matrices of each scale are non-persistent buffers
    (``window_indices_<s>``, ``coverage_<s>``), the class text features those of
    :class:`~anomaly_clip.methods.components.prompts.ClassTextFeatures`.
    """

    config_class = WinCLIPConfig
    associates_references = True

    def __init__(self, backbone: CLIPBackbone, config: WinCLIPConfig):
        super().__init__(backbone, config)
        self.grid = backbone.grid_size()
        indices, coverings = window_coverings(self.grid, config.scales, config.window_stride, backbone.device)
        for scale in config.scales:
            self.register_buffer(f"window_indices_{scale}", indices[scale], persistent=False)
            self.register_buffer(f"coverage_{scale}", coverings[scale], persistent=False)
        self.text = EnsembleTextFeatures(WINCLIP_PROMPTS).to(backbone.device)
        self.references: Optional[Mapping[str, Mapping[int, torch.Tensor]]] = None
        self.reference_weight = 0.5

    @property
    def coverings(self) -> Dict[int, torch.Tensor]:
        """{scale: (W_s, N) coverage matrix} of the windows of each scale."""
        return {scale: getattr(self, f"coverage_{scale}") for scale in self.config.scales}

    # ---- features ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> WinCLIPFeatures:
        """One pass over the images and all their windows: ``"image"`` (B, E) CLIP embedding,
        ``"patches"`` (B, N, width) ``ln_post`` patch tokens of the last block (no ``proj``), and
        ``"windows_<s>"`` (B, W_s, E) window embeddings per scale s."""
        tokens = self.backbone.embed_image(images)
        final = run_image_tower(self.backbone, tokens)
        features = {"image": pooled_embedding(self.backbone, final),
                    "patches": self.backbone.visual.ln_post(final[:, 1:])}
        for scale in self.config.scales:
            features[f"windows_{scale}"] = window_embeddings(self.backbone, tokens,
                                                             getattr(self, f"window_indices_{scale}"),
                                                             self.config.max_window_tokens)
        return features

    def _windows(self, features: WinCLIPFeatures) -> Dict[int, torch.Tensor]:
        return {scale: features[f"windows_{scale}"] for scale in self.config.scales}

    def _reference_rows(self, features: WinCLIPFeatures) -> PatchFeatures:
        return {FULL_SCALE: features["patches"], **self._windows(features)}

    def reference_features(self, images: torch.Tensor) -> PatchFeatures:
        """What WinCLIP+ keeps of normal images: full-scale patch tokens (B, N, width) under
        ``FULL_SCALE`` (0) and each scale's window embeddings (B, W_s, E) under the scale."""
        return self._reference_rows(self.encode(images))

    def set_references(self, features: Optional[Mapping[str, Mapping[int, torch.Tensor]]],
                       weight: float = 0.5) -> None:
        """WinCLIP+ state: unit reference features per class (keys of :meth:`reference_features`)
        and the fusion weight (0.5 = WinCLIP+: zero-shot and few-shot averaged); ``None`` returns
        to zero-shot WinCLIP. Raises ``ValueError`` for features of other scales or a weight
        outside [0, 1]."""
        if features is not None:
            expected = {FULL_SCALE, *self.config.scales}
            for name, keyed in features.items():
                if set(keyed) != expected:
                    raise ValueError(f"references of class {name!r} hold {sorted(keyed)}, WinCLIP+ needs "
                                     f"{sorted(expected)} (full-scale tokens and scales {list(self.config.scales)})")
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"the reference weight must lie in [0, 1], got {weight}")
        self.references, self.reference_weight = features, weight

    # ---- scoring -------------------------------------------------------------------------------
    def _few_shot(self, features: WinCLIPFeatures, class_names: Sequence[str]) -> torch.Tensor:
        references = self.references
        missing = sorted(set(class_names) - set(references))
        if missing:
            raise ValueError(f"no reference images for classes {missing}; the references hold {sorted(references)}")
        grid = torch.empty(len(class_names), self.grid[0] * self.grid[1], device=features["image"].device)
        windows = self._windows(features)
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, n in enumerate(class_names) if n == name], device=grid.device)
            grid[rows] = few_shot_grid(features["patches"][rows], {s: w[rows] for s, w in windows.items()},
                                       references[name], self.coverings)
        return grid

    def _reference_names(self, class_names: Optional[Sequence[str]], batch: int) -> Sequence[str]:
        if class_names is not None:
            return class_names
        if len(self.references) != 1:
            raise ValueError(f"the references hold several classes {sorted(self.references)}; name each image's class")
        return [next(iter(self.references))] * batch

    @torch.no_grad()
    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """Scores (B,) in [0, 1] and maps (B, S, S) in [0, 1]: zero-shot WinCLIP, or with
        references WinCLIP+ (zero-shot and few-shot grids mixed with the reference weight, the
        image score likewise with the few-shot grid's maximum), upsampled bilinearly; the
        features are those of :meth:`reference_features`."""
        self.check_images(images, class_names)
        features = self.encode(images)
        text = self.text(self.backbone, class_names, images.shape[0], self.default_class_name)
        temperature = self.config.temperature
        scores = abnormal_probability(features["image"], text, temperature)
        window_scores = {scale: abnormal_probability(windows, text, temperature)
                         for scale, windows in self._windows(features).items()}
        grid = zero_shot_grid(scores, window_scores, self.coverings)
        if self.references is not None:
            few_shot = self._few_shot(features, self._reference_names(class_names, images.shape[0]))
            weight = self.reference_weight
            grid = (1 - weight) * grid + weight * few_shot
            scores = (1 - weight) * scores + weight * few_shot.amax(dim=1)
        maps = F.interpolate(grid.view(-1, 1, *self.grid), size=images.shape[-2:], mode="bilinear",
                             align_corners=False)[:, 0]
        return Prediction(scores=scores.float(), maps=maps.float()), self._reference_rows(features)
