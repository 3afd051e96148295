"""The common face of every method: a frozen backbone plus small trainable parts.

Training, evaluation and checkpoints only talk to :class:`AnomalyDetector`, so a new method is
one folder under ``anomaly_clip/methods`` registered with :func:`anomaly_clip.engine.registry.register_method`.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from ..clip.backbone import BackboneConfig, CLIPBackbone
from .calibration import Calibration
from .inference import predict_files, raise_for_errors

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
    """Image-level scores (B,) and pixel-level anomaly maps (B, H, W), both float32; maps at
    each image's original resolution are a list of (H_i, W_i) tensors."""

    scores: torch.Tensor
    maps: Union[torch.Tensor, List[torch.Tensor]]

    def __iter__(self):
        return iter((self.scores, self.maps))


@dataclass
class Decision:
    """Normal (False) / anomalous (True) per image, and per pixel; None where no threshold is known."""

    labels: Optional[torch.Tensor]
    masks: Optional[Union[torch.Tensor, List[torch.Tensor]]]


class AnomalyDetector(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``config_class`` and implement the abstract hooks."""

    method_name: ClassVar[str] = ""
    config_class: ClassVar[Type[MethodConfig]] = MethodConfig
    mask_interpolation: ClassVar[str] = "bilinear"
    final_stage: ClassVar[str] = ""  # training stage whose checkpoints hold the finished model
    calibration: Optional[Calibration] = None  # thresholds and score statistics; load() reads the sidecar

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
        """Score a batch of preprocessed images (B, 3, S, S), S = :attr:`image_size`.

        Scores rank images and maps rank pixels *within one method*: their scales differ between
        methods (AnomalyCLIP maps lie in [0, number of layers], AA-CLIP maps are unbounded and
        often negative), so compare or threshold them only against outputs of the same model.
        Implementations start with :meth:`check_images`.
        """

    def check_images(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> None:
        """Reject a batch ``predict`` would score wrongly or fail on deep inside: anything but a
        float (B, 3, S, S) tensor at the model's own size, or class names of another count."""
        size = self.image_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor of shape (B, 3, {size}, {size}), got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or not images.is_floating_point():
            raise ValueError(
                f"expected preprocessed images of shape (B, 3, {size}, {size}) (float, CLIP-normalised), got "
                f"{tuple(images.shape)} {images.dtype}; load files with predict_paths() or "
                f"anomaly_clip.data.load_image(path, {size})")
        if class_names is not None and len(class_names) != images.shape[0]:
            raise ValueError(f"got {len(class_names)} class names for {images.shape[0]} images")

    def predict_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """:meth:`predict` and the patch features its maps were computed from, in one backbone pass
        (few-shot normal references compare them with a memory bank)."""
        raise TypeError(f"{self.method_name or type(self).__name__} exposes no patch features (needed by --reference_images)")

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        """The patch features of :meth:`predict_with_patch_features` alone (reference images)."""
        raise TypeError(f"{self.method_name or type(self).__name__} exposes no patch features (needed by --reference_images)")

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, h, w) per-layer maps on the patch grid -> (B, size, size) anomaly maps, upsampled,
        smoothed and summed over layers the way the method makes its own maps."""
        raise TypeError(f"{self.method_name or type(self).__name__} has no patch-map smoothing (needed by --reference_images)")

    def class_image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                           map_floors: torch.Tensor) -> torch.Tensor:
        """Image scores used for the image metrics of one class, from all of its images' scores
        and the maximum / minimum of each of their maps. A method whose reference evaluation
        fuses scores over a whole class overrides this; by default the scores are used as they are."""
        return scores

    def score_statistics(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                         map_floors: torch.Tensor) -> Dict[str, float]:
        """Constants that :meth:`image_scores` needs, measured once on calibration images (their
        raw scores and map maxima / minima) and stored with the calibration. None by default."""
        return {}

    def image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                     statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor:
        """Decision score of each image from its own outputs and fixed ``statistics`` only, so it
        never depends on the other images of a batch or folder (unlike :meth:`class_image_scores`,
        an evaluation protocol). By default the raw score."""
        return scores

    @torch.no_grad()
    def predict_paths(self, paths: Sequence[str], class_names: Optional[Sequence[str]] = None,
                      batch_size: int = 8, original_size: bool = False, num_workers: int = 0,
                      precision: str = "fp32") -> Prediction:
        """Score image files (any size, grayscale/RGBA/16-bit accepted) with the model's transform.

        Scores are the per-image decision scores (:meth:`image_scores`, with the calibration's
        statistics); maps are (N, S, S) at model resolution, or with ``original_size`` a list of
        maps at each image's own resolution. An unreadable file raises, naming every such file.
        """
        results = predict_files(self, paths, class_names=class_names, batch_size=batch_size,
                                num_workers=num_workers, precision=precision, original_size=original_size,
                                keep_maps=True, progress=False)
        raise_for_errors(results)
        scores = torch.tensor([r.score for r in results], dtype=torch.float32, device=self.device)
        maps = [r.map for r in results]
        return Prediction(scores=scores, maps=maps if original_size else torch.stack(maps))

    def decide(self, prediction: Prediction, image_threshold: Optional[float] = None,
               pixel_threshold: Optional[float] = None) -> Decision:
        """Labels ``score >= image threshold`` and masks ``map >= pixel threshold``; thresholds not
        given come from :attr:`calibration` (None where neither is known)."""
        image_threshold, pixel_threshold = self.thresholds(image_threshold, pixel_threshold)
        labels = prediction.scores >= image_threshold if image_threshold is not None else None
        masks = None
        if pixel_threshold is not None:
            maps = prediction.maps
            masks = [m >= pixel_threshold for m in maps] if isinstance(maps, list) else maps >= pixel_threshold
        return Decision(labels=labels, masks=masks)

    def thresholds(self, image_threshold: Optional[float] = None,
                   pixel_threshold: Optional[float] = None) -> tuple:
        """(image, pixel) thresholds: the given ones, else the calibration's, else None."""
        calibration = self.calibration
        if image_threshold is None and calibration is not None:
            image_threshold = calibration.image_threshold
        if pixel_threshold is None and calibration is not None:
            pixel_threshold = calibration.pixel_threshold
        return image_threshold, pixel_threshold

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
