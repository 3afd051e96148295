"""AA-CLIP settings: the one place their defaults are written (imports no torch): the detector
settings stored in checkpoints, and the two stages' optimisation settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

from ...engine.config import MethodConfig, block_numbers, check_choice, setting

DOMAIN_BLUR: Dict[str, Tuple[int, float]] = {"industrial": (7, 1.0), "medical": (9, 1.5)}
DEFAULT_DOMAIN = "industrial"
VV_AXES = ("batch", "tokens")
TEXT_LOSS_LEVELS = ("last", "all")
IMAGE_SCORES = ("fused", "detection")
TRAINING_MODES = ("few_shot", "full_shot")


@dataclass
class AdaptedImageConfig(MethodConfig):
    """Settings of AA-CLIP's image side: residual adapters, per-layer projections, maps and scores.

    ``dataset`` selects, with ``domain``/``blur_kernel``/``blur_sigma`` unset, the map blur of
    that dataset's domain. ``image_score``: ``fused`` reproduces the official evaluation (per
    class, min-max normalised detection score and map maximum combined, see
    :func:`~anomaly_clip.methods.aaclip.model.fuse_class_scores`); ``detection`` keeps the
    detection score alone.
    """

    # the official code builds exact-GELU ViT-L/14-336 and resizes positions through its open_clip
    # copy: bicubic with antialiasing (our checkpoints written before this rule record plain
    # "bicubic" and keep it)
    backbone_defaults: ClassVar[Dict[str, Any]] = {"activation": "gelu", "pos_embed_interpolation": "bicubic_antialias"}

    image_adapt_weight: float = setting(0.1, "image adapter blend weight")
    image_adapt_until: int = setting(6, "adapted visual blocks")
    features_list: Tuple[int, ...] = setting((6, 12, 18, 24), "visual blocks whose patch tokens are projected and "
                                             "make the maps", aliases=("levels",))
    relu: bool = setting(False, "LeakyReLU after the patch/detection projections (read from official files)")
    dataset: Optional[str] = setting(None, flag=False)
    domain: Optional[str] = setting(None, "blur settings of this domain (default: the dataset's domain)",
                                    choices=tuple(DOMAIN_BLUR))
    blur_kernel: Optional[int] = setting(None, "map blur kernel (default 7 industrial, 9 medical)")
    blur_sigma: Optional[float] = setting(None, "map blur sigma (default 1 industrial, 1.5 medical)")
    image_score: str = setting("fused", "fused: per-class normalised detection score and map maximum, as the "
                                        "official evaluation; detection: detection score alone", choices=IMAGE_SCORES)

    def __post_init__(self) -> None:
        self.features_list = block_numbers("features_list", self.features_list)
        if not 0.0 <= self.image_adapt_weight <= 1.0:
            raise ValueError(f"image_adapt_weight must lie in [0, 1], got {self.image_adapt_weight}")
        if self.image_adapt_until < 0:
            raise ValueError(f"image_adapt_until must be >= 0, got {self.image_adapt_until}")
        layers = self.features_list
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 1:
            raise ValueError(f"features_list must be increasing positive block numbers, got {layers}")
        if self.domain is not None and self.domain not in DOMAIN_BLUR:
            raise ValueError(f"domain must be one of {sorted(DOMAIN_BLUR)}, got {self.domain!r}")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")
        check_choice("image_score", self.image_score, IMAGE_SCORES)


@dataclass
class AAClipConfig(AdaptedImageConfig):
    """An AA-CLIP detector's settings (stored in checkpoints): the image side plus the text adapter.

    ``adapt_text=False`` builds anchors with plain CLIP text features (what the official code
    does when no text stage was trained); ``dataset`` also selects the class descriptions, which
    ``class_descriptions`` (class name -> description) overrides.
    """

    text_adapt_weight: float = setting(0.1, "text adapter blend weight")
    text_adapt_until: int = setting(3, "adapted text blocks")
    adapt_text: bool = setting(True, flag=False)
    class_descriptions: Dict[str, str] = setting(default_factory=dict, metavar="FILE",
                                                 help="JSON file {class name: description} overriding the built-in "
                                                      "descriptive names")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.text_adapt_weight <= 1.0:
            raise ValueError(f"text_adapt_weight must lie in [0, 1], got {self.text_adapt_weight}")
        if self.text_adapt_until < 0:
            raise ValueError(f"text_adapt_until must be >= 0, got {self.text_adapt_until}")


@dataclass
class ImageStageTraining:
    """Training data and the image stage (official defaults), shared with the hybrid method."""

    shot: int = setting(0, "few-shot training: K images per class, normal:anomalous 1:1 (0 = full shot)")
    training_mode: Optional[str] = setting(None, "full_shot ignores --shot; few_shot needs --shot > 0 (default: "
                                                 "from --shot)", choices=TRAINING_MODES)
    image_epoch: int = setting(20, "image-stage epochs")
    image_lr: float = setting(5e-4, "image-stage Adam learning rate")
    image_batch_size: int = setting(2, "image-stage batch size")
    image_milestones: Tuple[int, ...] = setting((16000, 32000), "image-stage MultiStepLR milestones in iterations")
    image_lr_gamma: float = setting(0.5, "image-stage MultiStepLR factor")
    seeded_augmentation: bool = setting(False, "draw each image's augmentation from (seed, epoch, image) rather than "
                                               "the global stream: independent of workers and processes (always on "
                                               "under torchrun)")

    def __post_init__(self) -> None:
        if self.image_epoch < 1:
            raise ValueError(f"need image_epoch >= 1, got {self.image_epoch}")
        if self.image_batch_size < 1:
            raise ValueError(f"need image_batch_size >= 1, got {self.image_batch_size}")
        if self.shot < 0:
            raise ValueError(f"need shot >= 0 (0 = full shot), got {self.shot}")
        if self.training_mode is not None:
            check_choice("training_mode", self.training_mode, TRAINING_MODES)
        self.image_milestones = tuple(int(m) for m in self.image_milestones)

    @property
    def shots(self) -> int:
        """Images per class for few-shot training, 0 for full shot."""
        mode = self.training_mode or ("few_shot" if self.shot > 0 else "full_shot")
        if mode == "full_shot":
            return 0
        if self.shot <= 0:
            raise ValueError("--training_mode few_shot needs --shot K with K > 0")
        return self.shot


@dataclass
class AAClipTraining(ImageStageTraining):
    """Optimisation settings of both stages (official defaults)."""

    text_epoch: int = setting(5, "stage-1 (text adapter) epochs; 0 skips it")
    text_lr: float = setting(1e-5, "stage-1 Adam learning rate")
    text_batch_size: int = setting(16, "stage-1 batch size")
    disentangle_weight: float = setting(0.1, "weight of the disentangle loss (anchor orthogonality), gamma in the "
                                             "paper", aliases=("text_norm_weight",))
    dpam_layers: int = setting(20, "stage-1 V-V CLIP: the last N-1 visual blocks use V-V attention",
                               aliases=("surgery_until_layer",))
    vv_axis: str = setting("batch", "stage-1 V-V attention across the batch at each token (official code) or across "
                                    "each image's tokens", choices=VV_AXES)
    text_loss_levels: str = setting("last", "stage-1 segmentation loss on the last layer only (official code) or "
                                            "summed over all layers", choices=TEXT_LOSS_LEVELS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_epoch < 0:
            raise ValueError(f"need text_epoch >= 0, got {self.text_epoch}")
        if self.text_batch_size < 1:
            raise ValueError(f"need text_batch_size >= 1, got {self.text_batch_size}")
        check_choice("vv_axis", self.vv_axis, VV_AXES)
        check_choice("text_loss_levels", self.text_loss_levels, TEXT_LOSS_LEVELS)
