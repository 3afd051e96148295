"""AnomalyCLIP: object-agnostic prompts + DPAM dual path + glocal loss (reference-code behaviour)."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional, Sequence

import torch

from ...clip.backbone import CLIPBackbone
from ...clip.dpam import DPAMConfig
from ..components.glocal import GlocalDetector
from . import official
from .config import AnomalyCLIPConfig
from .prompts import AGNOSTIC_CLASS, PromptLearner

logger = logging.getLogger(__name__)


class AnomalyCLIP(GlocalDetector):
    """Frozen CLIP with DPAM plus a trainable :class:`PromptLearner`.

    ``object_classes`` empty means object-agnostic prompts (the method); class names give the
    paper's object-aware ablation. Scores, maps and the glocal loss are
    :class:`~anomaly_clip.methods.components.glocal.GlocalDetector`'s.
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

    def dpam_config(self) -> DPAMConfig:
        return self.dpam

    def class_text(self, class_name: Optional[str] = None) -> Optional[str]:
        """None for object-agnostic prompts; the object-aware ablation's prompt class otherwise."""
        names = self.prompt_learner.class_names
        if len(names) == 1:
            return None
        chosen = (class_name or self.default_class_name or names[0]).replace("_", " ")
        if chosen not in names:
            raise ValueError(f"object-aware prompts know {list(names)}, not {chosen!r}")
        return chosen

    def text_rows(self, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) text features of each image: one pair broadcast (the object-agnostic pair, or
        the :attr:`default_class_name`'s; any batch size, also when traced), or each class's pair."""
        text = self.text_features()
        if class_names is not None and text.shape[0] > 1:
            return text[self.prompt_learner.class_index(class_names, batch, text.device)]
        row = 0 if text.shape[0] == 1 else self.prompt_learner.class_names.index(self.class_text())
        return text[row:row + 1].expand(batch, -1, -1)

    @classmethod
    def read_official_checkpoint(cls, path: str, contents: Optional[Dict[str, Any]] = None
                                 ) -> Optional[Dict[str, Any]]:
        return official.recognise(contents)

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        self.prompt_learner.load_state_dict(official.prompt_state(checkpoint, self.prompt_learner.state_dict()))
        self.text_parts_changed()

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        return official.checkpoint_files(self.prompt_learner.state_dict(), epoch)
