"""CoOp as AnomalyCLIP's baseline: learnt context + "normal/anomalous [cls]", scored and trained
as AnomalyCLIP (:class:`~anomaly_clip.methods.components.glocal.GlocalDetector`), plain CLIP
features by default (see :mod:`.config` for why DPAM is off)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...clip.backbone import CLIPBackbone
from ...clip.dpam import DPAMConfig
from ..components.glocal import GlocalDetector
from ..components.prompts import ClassAwareText, ClassTextFeatures, batch_class_names
from .config import CoOpConfig
from .prompts import CoOpPromptLearner


class CoOpDetector(ClassAwareText, GlocalDetector):
    """Frozen CLIP plus CoOp's learnt context vectors.

    Outside training the text features of each class are computed once into the non-persistent
    buffer ``text.features``; :meth:`text_parts_changed` drops them (after loading, after
    training, or by hand after editing the context).
    """

    config_class = CoOpConfig

    def __init__(self, backbone: CLIPBackbone, config: CoOpConfig):
        super().__init__(backbone, config)
        self.prompt_learner = CoOpPromptLearner(backbone, config.n_ctx)
        self.dpam = DPAMConfig(dpam_layers=config.dpam_layers, structure="dual") if config.dpam_layers else None
        self.text = ClassTextFeatures().to(backbone.device)

    def dpam_config(self) -> Optional[DPAMConfig]:
        return self.dpam

    def text_parts_changed(self) -> None:
        """Drop the frozen text rows: the next forward computes them from the current context."""
        self.text.clear()

    def text_rows(self, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
        """(B, 2, E) unit text features of each image's class ("object" when none is named): from
        the context vectors while training or with gradients, else the frozen rows."""
        if self.training or torch.is_grad_enabled():
            names = batch_class_names(class_names, batch, self.default_class_name)
            unique = list(dict.fromkeys(names))
            text = self.prompt_learner(self.backbone, unique)
            return text[torch.tensor([unique.index(name) for name in names], device=text.device)]
        return self.text.rows(class_names, batch, lambda missing: self.prompt_learner(self.backbone, missing),
                              self.default_class_name)
