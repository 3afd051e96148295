"""The common face of every method: a frozen backbone plus small trainable parts.

A detector is a plain ``nn.Module`` whose :meth:`~AnomalyDetector.forward` maps preprocessed
images (and optionally class names) to a :class:`Prediction`, computed from tensors and
registered buffers only. Everything around it lives elsewhere: thresholds and decisions in the
post-processor (:class:`anomaly_clip.engine.calibration.Calibration`), file reading in the
inferencer (:mod:`anomaly_clip.engine.inference`), training in the method's recipe and
:mod:`anomaly_clip.engine.training`, the official checkpoint formats in ``methods/<name>/official.py``.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

from ..clip.backbone import BackboneConfig, CLIPBackbone
from .config import MethodConfig
from .registry import method_of

PatchFeatures = Dict[int, torch.Tensor]
"""Unit-norm patch features (B, N, E) per visual block (1-based), class token excluded."""


@dataclass
class Prediction:
    """Image-level scores (B,) and pixel-level anomaly maps (B, H, W), both float32; maps at
    each image's original resolution are a list of (H_i, W_i) tensors."""

    scores: torch.Tensor
    maps: Union[torch.Tensor, List[torch.Tensor]]

    def __iter__(self):
        return iter((self.scores, self.maps))


class AnomalyDetector(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses set ``config_class`` and implement :meth:`forward_with_patch_features`.

    Frozen text features are buffers: a method whose text side is trainable recomputes them in
    :meth:`text_parts_changed`, which runs after ``load_state_dict`` and when training ends
    (``eval()`` after ``train()``); call it yourself after changing text parameters by hand.
    """

    config_class: ClassVar[Type[MethodConfig]] = MethodConfig
    mask_interpolation: ClassVar[str] = "bilinear"
    associates_references: ClassVar[bool] = False
    """True: the method owns its few-shot association (:meth:`set_references`: WinCLIP+, APRIL-GAN's
    memory) instead of the engine's fusion of :mod:`anomaly_clip.engine.references`."""
    few_shot_score_needs_calibration: ClassVar[bool] = False
    """True: with normal references, the per-image score (:meth:`image_scores`) needs the score
    statistics of a calibration made with them, and is the zero-shot score without one (APRIL-GAN,
    whose fusion normalises the map maxima over a class); ``predict`` warns then."""
    calibration: Optional[Any] = None
    """The post-processor (:class:`~anomaly_clip.engine.calibration.Calibration`) found beside a
    loaded checkpoint (thresholds, score statistics); the inferencer uses it, :meth:`forward` never does."""
    default_class_name: Optional[str] = None
    """Class of the images when :meth:`forward` gets no class names (None: the method's generic
    text, e.g. AA-CLIP's anchors of 'object'); ONNX export sets it to put one class's text in the graph."""
    trained_class_names: Optional[List[str]] = None
    """Classes of the training data, when the loaded checkpoint records them (ours do)."""

    def __init__(self, backbone: CLIPBackbone, config: MethodConfig):
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.text_parts_changed())

    @classmethod
    def default_backbone_config(cls) -> BackboneConfig:
        """The backbone settings of the method's official code (activation, resizing)."""
        return BackboneConfig(**cls.config_class.backbone_defaults)

    @property
    def method_name(self) -> str:
        """The name this detector's class is registered under (``anomalyclip``, ``aaclip``, ...)."""
        return method_of(type(self))

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def image_size(self) -> int:
        return self.backbone.config.image_size

    @property
    def backbone_config(self) -> Dict[str, Any]:
        """The backbone's settings (:meth:`BackboneConfig.to_dict`), as calibrations and exports record them."""
        return self.backbone.config.to_dict()

    def forward(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> Prediction:
        """Score a batch of preprocessed images (B, 3, S, S), S = :attr:`image_size`.

        Scores rank images and maps rank pixels *within one method*: their scales differ between
        methods (AnomalyCLIP maps lie in [0, number of layers], AA-CLIP maps are unbounded and
        often negative), so compare or threshold them only against outputs of the same model.
        """
        return self.forward_with_patch_features(images, class_names)[0]

    @abstractmethod
    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """:meth:`forward` and the patch features its maps were computed from, in one backbone
        pass (few-shot normal references compare them with a memory bank). Implementations start
        with :meth:`check_images`."""

    def text_parts_changed(self) -> None:
        """Refresh (or drop) buffers derived from trainable text parts; nothing by default."""

    def class_text(self, class_name: Optional[str] = None) -> Optional[str]:
        """What the frozen text of :meth:`forward` encodes for images of ``class_name`` (None:
        :attr:`default_class_name`), e.g. AA-CLIP's class description; None when that text is the
        same for every class (object-agnostic prompts). Names scored with the same text give the same
        value, so calibrations and exports compare it. ``ValueError`` for a class it cannot score."""
        return None

    def train(self, mode: bool = True) -> "AnomalyDetector":
        """Set the mode; the frozen backbone always stays in eval mode. Leaving training mode
        refreshes the frozen text buffers (the text parts may have been trained)."""
        was_training = self.training
        super().train(mode)
        self.backbone.train(False)
        if was_training and not mode:
            self.text_parts_changed()
        return self

    def check_images(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None) -> None:
        """Reject a batch ``forward`` would score wrongly or fail on deep inside: anything but a
        float (B, 3, S, S) tensor at the model's own size, or class names of another count."""
        size = self.image_size
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor of shape (B, 3, {size}, {size}), got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size) or not images.is_floating_point():
            raise ValueError(
                f"expected preprocessed images of shape (B, 3, {size}, {size}) (float, CLIP-normalised), got "
                f"{tuple(images.shape)} {images.dtype}; load files with anomaly_clip.Inferencer or "
                f"anomaly_clip.data.load_image(path, {size})")
        if class_names is not None and len(class_names) != images.shape[0]:
            raise ValueError(f"got {len(class_names)} class names for {images.shape[0]} images")

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        """The patch features of :meth:`forward_with_patch_features` alone (normal reference images)."""
        raise TypeError(f"{self.method_name or type(self).__name__} exposes no patch features (needed by "
                        "--reference_images)")

    def reference_features(self, images: torch.Tensor) -> PatchFeatures:
        """What a memory bank stores of normal reference images (B, 3, S, S): (B, M_k, C_k) features
        per key. By default the :meth:`patch_features` compared with the test patches; a method
        with :attr:`associates_references` stores what its own few-shot association reads."""
        return self.patch_features(images)

    def set_references(self, features: Optional[Mapping[str, Mapping[int, torch.Tensor]]],
                       weight: float = 0.5) -> None:
        """Few-shot state of a method that owns its association (:attr:`associates_references`):
        ``features[class][key]`` (M, C) are the unit :meth:`reference_features` of that class's
        normal images, stacked; ``weight`` the ``--reference_weight`` of the fusion. From then on
        :meth:`forward` scores with them; ``None`` returns to zero-shot scoring. It only stores
        them (constant time: the engine calls it for every batch). Other methods raise ``TypeError``."""
        raise TypeError(f"{self.method_name or type(self).__name__} has no few-shot association of its own")

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """(B, L, h, w) per-layer maps on the patch grid -> (B, size, size) anomaly maps, upsampled,
        smoothed and summed over layers the way the method makes its own maps."""
        raise TypeError(f"{self.method_name or type(self).__name__} has no patch-map smoothing (needed by "
                        "--reference_images)")

    # ---- the method's score rules (applied by evaluation and the post-processor) ----------------
    def class_image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                           map_floors: torch.Tensor) -> torch.Tensor:
        """Image scores used for the image metrics of one class, from all of its images' scores
        and the maximum / minimum of each of their maps. A method whose official evaluation
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
        an evaluation protocol): :meth:`image_score_rule` with this detector's settings."""
        return self.image_score_rule(self.config, scores, map_peaks, map_floors, statistics)

    @classmethod
    def image_score_rule(cls, config: MethodConfig, scores: torch.Tensor, map_peaks: torch.Tensor,
                         map_floors: torch.Tensor, statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor:
        """:meth:`image_scores` from the method's settings alone, so that a model run without the
        detector (an ONNX graph, :class:`~anomaly_clip.engine.export.OnnxDetector`) applies the same
        rule. By default the raw score."""
        return scores

    # ---- learnt state and official checkpoints -------------------------------------------------
    def trainable_state_dict(self) -> Dict[str, Any]:
        """State of the learnt parts only (the backbone is frozen and never stored)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: Dict[str, Any]) -> None:
        """Load :meth:`trainable_state_dict` output; a missing or unexpected key is an error."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit {self.method_name}: missing {missing}, unexpected {unexpected}")

    @classmethod
    def read_official_checkpoint(cls, path: str, contents: Optional[Dict[str, Any]] = None
                                 ) -> Optional[Dict[str, Any]]:
        """The official code's checkpoint at ``path`` (a file whose dictionary ``contents`` was
        already read, or a folder: ``contents`` None) if it is one of this method, else None."""
        return None

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        raise ValueError(f"{self.method_name} has no official checkpoint format")

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        """File name -> payload in the official code's format (empty when there is none)."""
        return {}
