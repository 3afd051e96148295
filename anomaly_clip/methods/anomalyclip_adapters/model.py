"""AnomalyCLIP prompts + AA-CLIP image adapters: a combination beyond both papers.

AA-CLIP's image side only needs a normal and an abnormal text anchor per image. Here those come
from AnomalyCLIP's object-agnostic learnt prompts instead of AA-CLIP's adapted text tower: stage 1
trains (or loads) an AnomalyCLIP prompt learner with its glocal loss, stage 2 trains AA-CLIP's
image adapters against its fixed text features. No class names are needed at any point.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

import torch

from ...clip.backbone import CLIPBackbone
from ..aaclip.model import AdaptedImageDetector
from ..anomalyclip.config import AnomalyCLIPConfig
from ..anomalyclip.model import AnomalyCLIP
from ..anomalyclip.prompts import AGNOSTIC_CLASS, PromptLearner
from .config import PROMPT_FIELDS, PromptAdapterConfig

logger = logging.getLogger(__name__)


class PromptAdapterDetector(AdaptedImageDetector):
    """AA-CLIP's adapted image features scored against AnomalyCLIP's learnt prompt features."""

    config_class = PromptAdapterConfig

    def __init__(self, backbone: CLIPBackbone, config: PromptAdapterConfig):
        super().__init__(backbone, config)
        self.prompt_learner = PromptLearner(
            backbone, n_ctx=config.n_ctx, depth=config.depth, t_n_ctx=config.t_n_ctx, class_names=(AGNOSTIC_CLASS,),
            half_precision_deep_tokens=config.half_precision_deep_tokens,
            unused_projection_dim=config.unused_projection_dim,
        ).to(backbone.device)

    def anchor_keys(self, class_names: Sequence[str]) -> List[str]:
        return [AGNOSTIC_CLASS] * len(class_names)

    def compute_anchors(self, keys: Sequence[str]) -> torch.Tensor:
        """The object-agnostic (normal, abnormal) prompt features as (C, E, 2) anchors."""
        text = self.prompt_learner(self.backbone)[0].transpose(0, 1)
        return text.unsqueeze(0).expand(len(keys), -1, -1)

    def prompt_config(self) -> AnomalyCLIPConfig:
        """The AnomalyCLIP configuration whose prompt learner this detector holds."""
        return AnomalyCLIPConfig(**{name: getattr(self.config, name) for name in PROMPT_FIELDS})

    def load_prompts(self, detector: AnomalyCLIP, adopt_settings: bool = False) -> None:
        """Take the prompt learner of a trained object-agnostic AnomalyCLIP detector. Prompt
        settings that differ from this detector's are an error, or with ``adopt_settings``
        become this detector's (a ``--prompt_checkpoint`` of another prompt shape)."""
        if detector.config.object_classes:
            raise ValueError("only object-agnostic AnomalyCLIP prompts can serve as anchors")
        mismatched = [n for n in PROMPT_FIELDS if getattr(detector.config, n) != getattr(self.config, n)]
        if mismatched and not adopt_settings:
            raise ValueError(f"AnomalyCLIP prompt settings {mismatched} differ from this detector's")
        if mismatched:
            logger.info("Prompt settings %s taken from the AnomalyCLIP prompts",
                        {name: getattr(detector.config, name) for name in mismatched})
            for name in PROMPT_FIELDS:
                setattr(self.config, name, getattr(detector.config, name))
            self.prompt_learner = detector.prompt_learner
            self.text_parts_changed()
        else:
            self.prompt_learner.load_state_dict(detector.prompt_learner.state_dict())
        self.text_parts_changed()
