"""The common face of every method: a frozen backbone plus small trainable parts.

Training, evaluation and checkpoints only talk to :class:`AnomalyDetector`, so a new method is
one folder under ``anomaly_clip/methods`` registered with :func:`anomaly_clip.engine.registry.register_method`.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Dict, Iterable, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ..clip.backbone import BackboneConfig, CLIPBackbone
from ..data.dataset import load_image

PatchFeatures = Dict[int, torch.Tensor]
"""Unit-norm patch features (B, N, E) per visual block (1-based), class token excluded."""


def parameter_state(parameters: Iterable[torch.Tensor]) -> tuple:
    """Identity of the parameters' current values: it changes with every in-place update
    (optimiser step, ``load_state_dict``) and every move, so outputs computed from frozen-at-
    inference parameters can be cached under it."""
    return tuple((p.device, p.data_ptr(), p._version) for p in parameters)


@dataclass
class MethodConfig:
    """Base of the per-method hyper-parameter dataclasses (serialised into checkpoints)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> "MethodConfig":
        values = values or {}
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}")
        converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**converted)


@dataclass
class Prediction:
    """Image-level scores (B,) and pixel-level anomaly maps (B, H, W), both float32."""

    scores: torch.Tensor
    maps: torch.Tensor

    def __iter__(self):
        return iter((self.scores, self.maps))


class AnomalyDetector(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``config_class`` and implement the abstract hooks."""

    method_name: ClassVar[str] = ""
    config_class: ClassVar[Type[MethodConfig]] = MethodConfig
    mask_interpolation: ClassVar[str] = "bilinear"
    final_stage: ClassVar[str] = ""  # training stage whose checkpoints hold the finished model

    def __init__(self, backbone: CLIPBackbone, config: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config

    @classmethod
    def default_backbone_config(cls) -> BackboneConfig:
        """The backbone settings of the method's reference code (activation, resizing)."""
        return BackboneConfig()

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def image_size(self) -> int:
        return self.backbone.config.image_size

    @abstractmethod
    def predict(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Prediction:
        """Score a batch of preprocessed images (B, 3, S, S)."""

    def predict_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """:meth:`predict` and the patch features its maps were computed from, in one backbone pass
        (few-shot normal references compare them with a memory bank)."""
        raise NotImplementedError(f"{self.method_name or type(self).__name__} exposes no patch features")

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        """The patch features of :meth:`predict_with_patch_features` alone (reference images)."""
        raise NotImplementedError(f"{self.method_name or type(self).__name__} exposes no patch features")

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, h, w) per-layer maps on the patch grid -> (B, size, size) anomaly maps, upsampled,
        smoothed and summed over layers the way the method makes its own maps."""
        raise NotImplementedError(f"{self.method_name or type(self).__name__} has no patch-map smoothing")

    def class_image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                           map_floors: torch.Tensor) -> torch.Tensor:
        """Image scores used for the image metrics of one class, from all of its images' scores
        and the maximum / minimum of each of their maps. A method whose reference evaluation
        fuses scores over a whole class overrides this; by default the scores are used as they are."""
        return scores

    @torch.no_grad()
    def predict_paths(self, paths: Sequence[str], class_names: Optional[Sequence[str]] = None,
                      batch_size: int = 8) -> Prediction:
        """Score image files (any size, grayscale/RGBA/16-bit accepted) with the model's transform."""
        scores, maps = [], []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = torch.stack([load_image(p, self.image_size) for p in chunk]).to(self.device)
            names = class_names[start:start + batch_size] if class_names is not None else None
            prediction = self.predict(images, names)
            scores.append(prediction.scores)
            maps.append(prediction.maps)
        return Prediction(scores=torch.cat(scores), maps=torch.cat(maps))

    def trainable_state_dict(self) -> Dict[str, Any]:
        """State of the learnt parts only (the backbone is frozen and never stored)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: Dict[str, Any]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit {self.method_name}: missing {missing}, unexpected {unexpected}")

    @classmethod
    def read_official_checkpoint(cls, path: str) -> Optional[Dict[str, Any]]:
        """Return the reference code's checkpoint at ``path`` if it is one of this method, else None."""
        return None

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        raise ValueError(f"{self.method_name} has no official checkpoint format")

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        """File name -> payload in the reference code's format (empty when there is none)."""
        return {}

    def train(self, mode: bool = True) -> "AnomalyDetector":
        super().train(mode)
        self.backbone.train(False)
        return self
