"""The CLIP and CLIP-AC baselines of AnomalyCLIP's Tables 1-2 (appendix A.2), training-free.

Plain CLIP (no DPAM, no learnt part) scored against two class-aware text features:

* text: the [normal, abnormal] features of a :class:`~.prompts.PromptEnsemble` (CLIP: one sentence
  per state; CLIP-AC: the 80 ImageNet templates), unit-normalised;
* image score: ``softmax(100 * cos(global, text))[abnormal]`` with CLIP's own global embedding
  ``ln_post(CLS) @ proj`` and CLIP's logit scale 100 (temperature 0.01);
* maps: "the same computation on each patch embedding": the last block's patch tokens through
  ``ln_post`` and ``proj`` (CLIP's own output projection, the only way a patch token reaches the
  joint space), unit-normalised, the same softmax, upsampled bilinearly (corners not aligned)
  to the image and Gaussian-filtered with sigma 4, as AnomalyCLIP's evaluation code (which
  produced these columns) treats every map (:mod:`.glocal`).

The backbone defaults are AnomalyCLIP's (ViT-L/14-336, QuickGELU, 518 px, bilinear position
resize): the paper's authors re-ran both baselines in their own code.
"""
from __future__ import annotations

from typing import ClassVar, Optional, Sequence

import torch

from ...clip.backbone import CLIPBackbone
from .config import CLIPBaselineConfig
from .glocal import GlocalDetector
from .prompts import ClassAwareText, EnsembleTextFeatures, PromptEnsemble


class CLIPBaseline(ClassAwareText, GlocalDetector):
    """Plain CLIP against fixed class-aware prompts (module docstring); subclasses set :attr:`prompts`.

    The text features of each class are computed once, on first use, into the non-persistent
    buffer ``text.features`` (see :class:`~.prompts.ClassTextFeatures`).
    """

    config_class = CLIPBaselineConfig
    prompts: ClassVar[PromptEnsemble]

    def __init__(self, backbone: CLIPBackbone, config: CLIPBaselineConfig):
        super().__init__(backbone, config)
        self.text = EnsembleTextFeatures(self.prompts, normalize=True).to(backbone.device)

    def text_rows(self, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) unit text features of each image's class (:meth:`text_class` when none is named)."""
        return self.text(self.backbone, class_names, batch, self.default_class_name)
