"""AnomalyCLIP prompts + AA-CLIP image adapters: a combination beyond both papers.

AA-CLIP's image side only needs a normal and an abnormal text anchor per image. Here those come
from AnomalyCLIP's object-agnostic learnt prompts instead of AA-CLIP's adapted text tower: stage 1
trains (or loads) an AnomalyCLIP prompt learner with its glocal loss, stage 2 trains AA-CLIP's
image adapters against its fixed text features. No class names are needed at any point.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Sequence

import torch

from ..backbone import BackboneConfig, CLIPBackbone
from ..detector import register_method
from ..prompts import AGNOSTIC_CLASS, REFERENCE_UNUSED_PROJECTION_DIM, PromptLearner
from .aaclip import AdaptedImageConfig, AdaptedImageDetector
from .anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

PROMPT_FIELDS = ("n_ctx", "depth", "t_n_ctx", "half_precision_deep_tokens", "unused_projection_dim")


@dataclass
class PromptAdapterConfig(AdaptedImageConfig):
    """AA-CLIP image side plus the shape of AnomalyCLIP's object-agnostic prompt learner."""

    n_ctx: int = 12
    depth: int = 9
    t_n_ctx: int = 4
    half_precision_deep_tokens: bool = True
    unused_projection_dim: int = REFERENCE_UNUSED_PROJECTION_DIM


@register_method("anomalyclip_adapters")
class PromptAdapterDetector(AdaptedImageDetector):
    """AA-CLIP's adapted image features scored against AnomalyCLIP's learnt prompt features."""

    config_class = PromptAdapterConfig
    argument_fields = AdaptedImageDetector.argument_fields + ("n_ctx", "depth", "t_n_ctx")

    def __init__(self, backbone: CLIPBackbone, config: PromptAdapterConfig):
        super().__init__(backbone, config)
        self.prompt_learner = PromptLearner(
            backbone, n_ctx=config.n_ctx, depth=config.depth, t_n_ctx=config.t_n_ctx, class_names=(AGNOSTIC_CLASS,),
            half_precision_deep_tokens=config.half_precision_deep_tokens,
            unused_projection_dim=config.unused_projection_dim,
        ).to(backbone.device)

    @classmethod
    def default_backbone_config(cls) -> BackboneConfig:
        """The prompts are AnomalyCLIP's, learnt on its backbone settings (QuickGELU, bilinear)."""
        return AnomalyCLIP.default_backbone_config()

    def anchor_keys(self, class_names: Sequence[str]) -> List[str]:
        return [AGNOSTIC_CLASS] * len(class_names)

    def anchor_parameters(self) -> Iterator[torch.nn.Parameter]:
        return self.prompt_learner.parameters()

    def compute_anchors(self, keys: Sequence[str]) -> torch.Tensor:
        """The object-agnostic (normal, abnormal) prompt features as (C, E, 2) anchors."""
        text = self.prompt_learner(self.backbone)[0].transpose(0, 1)
        return text.unsqueeze(0).expand(len(keys), -1, -1)

    def prompt_config(self) -> AnomalyCLIPConfig:
        """The AnomalyCLIP configuration whose prompt learner this detector holds."""
        return AnomalyCLIPConfig(**{name: getattr(self.config, name) for name in PROMPT_FIELDS})

    def load_prompts(self, detector: AnomalyCLIP) -> None:
        """Take the prompt learner of a trained object-agnostic AnomalyCLIP detector."""
        if detector.config.object_classes:
            raise ValueError("only object-agnostic AnomalyCLIP prompts can serve as anchors")
        mismatched = [n for n in PROMPT_FIELDS if getattr(detector.config, n) != getattr(self.config, n)]
        if mismatched:
            raise ValueError(f"AnomalyCLIP prompt settings {mismatched} differ from this detector's")
        self.prompt_learner.load_state_dict(detector.prompt_learner.state_dict())

    @classmethod
    def add_train_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP prompts + AA-CLIP image adapters")
        cls.add_architecture_flags(group)
        group.add_argument("--prompt_checkpoint", default=None,
                           help="trained AnomalyCLIP checkpoint (ours or official epoch_15.pth) to take the prompts "
                                "from; without it stage 1 trains them")
        group.add_argument("--prompt_epoch", type=int, default=15, help="stage-1 (AnomalyCLIP prompts) epochs")
        group.add_argument("--prompt_lr", type=float, default=1e-3, help="stage-1 Adam learning rate")
        group.add_argument("--prompt_batch_size", type=int, default=8, help="stage-1 batch size")
        cls.add_image_training_flags(group)

    @classmethod
    def add_architecture_flags(cls, group: argparse._ArgumentGroup) -> None:
        super().add_architecture_flags(group)
        group.add_argument("--n_ctx", type=int, default=None, help="learnable context length (default 12)")
        group.add_argument("--depth", type=int, default=None, help="deep text prompt depth (default 9)")
        group.add_argument("--t_n_ctx", type=int, default=None, help="deep text tokens per block (default 4)")

    @classmethod
    def train_from_args(cls, args: argparse.Namespace) -> Path:
        from ..aaclip_training import train_prompt_adapters_from_args

        return train_prompt_adapters_from_args(args)
