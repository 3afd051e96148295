"""AnomalyCLIP: object-agnostic prompts + DPAM dual path + glocal loss (reference-code behaviour)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..backbone import BackboneConfig, CLIPBackbone
from ..detector import AnomalyDetector, MethodConfig, Prediction, parameter_state, register_method
from ..dpam import DPAMConfig, encode_image, patch_grid
from ..losses import classification_loss, multi_level_segmentation_loss
from ..prompts import AGNOSTIC_CLASS, REFERENCE_UNUSED_PROJECTION_DIM, PromptLearner
from ..precision import float32_einsum
from ..smoothing import gaussian_filter

logger = logging.getLogger(__name__)


@dataclass
class AnomalyCLIPConfig(MethodConfig):
    """Hyper-parameters of the reference scripts; ``features_list=(24,)`` is what the released
    checkpoints were trained and tested with, ``(6, 12, 18, 24)`` the paper's setting."""

    n_ctx: int = 12
    depth: int = 9
    t_n_ctx: int = 4
    features_list: Tuple[int, ...] = (24,)
    dpam_layers: int = 20
    dpam_attention: str = "vv"
    temperature: float = 0.07
    sigma: float = 4.0
    seg_loss_weight: float = 4.0
    object_classes: Tuple[str, ...] = ()
    half_precision_deep_tokens: bool = True
    unused_projection_dim: int = REFERENCE_UNUSED_PROJECTION_DIM


@register_method("anomalyclip")
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
        self.dpam = DPAMConfig(layers=config.dpam_layers, attention=config.dpam_attention, structure="dual")
        self._frozen_text: Optional[Tuple[tuple, torch.Tensor]] = None

    @classmethod
    def default_backbone_config(cls) -> BackboneConfig:
        return BackboneConfig(activation="quick_gelu", pos_embed_interpolation="bilinear")

    def text_features(self) -> torch.Tensor:
        """(n_cls, 2, E) normalised [normal, abnormal] features; without gradients they are
        computed once per state of the prompt parameters and reused."""
        if torch.is_grad_enabled():
            return self.prompt_learner(self.backbone)
        state = parameter_state(self.prompt_learner.parameters())
        if self._frozen_text is None or self._frozen_text[0] != state:
            self._frozen_text = (state, self.prompt_learner(self.backbone))
        return self._frozen_text[1]

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Normalised global embedding (B, E) and projected patch tokens (B, L, 1+N, E)."""
        visual = encode_image(self.backbone, images, self.config.features_list, self.dpam)
        patches = torch.stack([self.backbone.project_tokens(visual.layer_tokens[layer])
                               for layer in self.config.features_list], dim=1)
        return {"global": F.normalize(visual.global_embedding, dim=-1), "patches": F.normalize(patches, dim=-1)}

    def _text_rows(self, text: torch.Tensor, class_names: Optional[Sequence[str]], batch: int) -> torch.Tensor:
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

    @torch.no_grad()
    def predict(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Prediction:
        features = self.image_features(images)
        text_rows = self._text_rows(self.text_features(), class_names, images.shape[0])
        scores = self.image_logits(features["global"], text_rows).softmax(dim=-1)[:, 1]
        probabilities = self.layer_probabilities(features["patches"], text_rows, images.shape[-1])
        maps = ((probabilities[:, :, 1] + 1 - probabilities[:, :, 0]) / 2).sum(dim=1)
        maps = gaussian_filter(maps, self.config.sigma)
        return Prediction(scores=scores.float(), maps=maps.float())

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
    def read_official_checkpoint(cls, path: str) -> Optional[Dict[str, Any]]:
        if not Path(path).is_file():
            return None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - not ours to read; the caller reports
            return None
        if isinstance(checkpoint, dict) and set(checkpoint) == {"prompt_learner"}:
            return checkpoint
        return None

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint["prompt_learner"]
        self._check_official_shapes(state)
        self.prompt_learner.load_state_dict(state)

    def _check_official_shapes(self, state: Dict[str, torch.Tensor]) -> None:
        own = self.prompt_learner.state_dict()
        problems = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and v.shape != own[k].shape]
        if problems:
            raise ValueError(
                "official prompt learner does not fit this configuration (check --n_ctx/--depth/--t_n_ctx "
                f"and the backbone): {problems[:6]}"
            )

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        state = {k: v.detach().cpu() for k, v in self.prompt_learner.state_dict().items()}
        name = f"official_epoch_{epoch}.pth" if epoch is not None else "official.pth"
        return {name: {"prompt_learner": state}}

    @classmethod
    def add_train_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP")
        _add_shared_flags(group)
        group.add_argument("--epoch", type=int, default=15, help="training epochs")
        group.add_argument("--learning_rate", type=float, default=1e-3, help="Adam learning rate")
        group.add_argument("--batch_size", type=int, default=8, help="training batch size")
        group.add_argument("--seg_loss_weight", type=float, default=None,
                           help="lambda of the local loss (default 4); 0 trains the global loss only, "
                                "for data without masks")
        group.add_argument("--feature_cache", default="auto", choices=("auto", "off", "device", "host", "disk"),
                           help="reuse frozen image features after the first epoch (auto: device/host/disk "
                                "by size; off recomputes every epoch)")

    @classmethod
    def add_test_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP")
        _add_shared_flags(group)
        group.add_argument("--sigma", type=float, default=None, help="Gaussian sigma of the anomaly map (default 4)")

    @classmethod
    def config_from_args(cls, args: argparse.Namespace, base: Optional[dict] = None) -> Dict[str, Any]:
        values = dict(base or {})
        for name in ("n_ctx", "depth", "t_n_ctx", "dpam_layers", "sigma", "seg_loss_weight"):
            if getattr(args, name, None) is not None:
                values[name] = getattr(args, name)
        if getattr(args, "features_list", None):
            values["features_list"] = tuple(args.features_list)
        if getattr(args, "dpam_attention", None):
            values["dpam_attention"] = args.dpam_attention
        if getattr(args, "object_classes", None):
            values["object_classes"] = tuple(args.object_classes)
        return values

    @classmethod
    def train_from_args(cls, args: argparse.Namespace) -> Path:
        from ..anomalyclip_training import train_from_args

        return train_from_args(args)


def _add_shared_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--depth", type=int, default=None, help="deep text prompt depth (default 9)")
    group.add_argument("--n_ctx", type=int, default=None, help="learnable context length (default 12)")
    group.add_argument("--t_n_ctx", type=int, default=None, help="deep text tokens per block (default 4)")
    group.add_argument("--features_list", type=int, nargs="+", default=None,
                       help="image blocks whose patch tokens make the maps (default 24; paper: 6 12 18 24)")
    group.add_argument("--dpam_layers", type=int, default=None, help="DPAM depth (default 20: last 19 blocks)")
    group.add_argument("--dpam_attention", choices=("vv", "qq", "kk"), default=None,
                       help="DPAM attention variant (default vv)")
    group.add_argument("--object_classes", nargs="+", default=None,
                       help="object-aware ablation: one prompt pair per listed class name")
