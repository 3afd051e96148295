"""AA-CLIP settings: the one place their defaults are written (detector configs stored in
checkpoints, and the two stages' optimisation settings)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ...engine.detector import MethodConfig

DOMAIN_BLUR: Dict[str, Tuple[int, float]] = {"industrial": (7, 1.0), "medical": (9, 1.5)}
DEFAULT_DOMAIN = "industrial"
VV_AXES = ("batch", "tokens")
TEXT_LOSS_LEVELS = ("last", "all")
IMAGE_SCORES = ("fused", "detection")



@dataclass
class AdaptedImageConfig(MethodConfig):
    """Settings of AA-CLIP's image side: residual adapters, level projections, maps and scores.

    ``dataset`` selects, with ``domain``/``blur_kernel``/``blur_sigma`` unset, the map blur of
    that dataset's domain. ``image_score``: ``fused`` reproduces the reference evaluation (per
    class, min-max normalised detection score and map maximum combined, see
    :func:`fuse_class_scores`); ``detection`` keeps the detection score alone.
    """

    image_adapt_weight: float = 0.1
    image_adapt_until: int = 6
    levels: Tuple[int, ...] = (6, 12, 18, 24)
    relu: bool = False
    dataset: Optional[str] = None
    domain: Optional[str] = None
    blur_kernel: Optional[int] = None
    blur_sigma: Optional[float] = None
    image_score: str = "fused"

    def __post_init__(self) -> None:
        self.levels = tuple(int(level) for level in self.levels)
        if not 0.0 <= self.image_adapt_weight <= 1.0:
            raise ValueError(f"image_adapt_weight must lie in [0, 1], got {self.image_adapt_weight}")
        if self.image_adapt_until < 0:
            raise ValueError(f"image_adapt_until must be >= 0, got {self.image_adapt_until}")
        if not self.levels or list(self.levels) != sorted(set(self.levels)) or self.levels[0] < 1:
            raise ValueError(f"levels must be increasing positive block numbers, got {self.levels}")
        if self.domain is not None and self.domain not in DOMAIN_BLUR:
            raise ValueError(f"domain must be one of {sorted(DOMAIN_BLUR)}, got {self.domain!r}")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be odd and positive, got {self.blur_kernel}")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise ValueError(f"blur_sigma must be positive, got {self.blur_sigma}")
        if self.image_score not in IMAGE_SCORES:
            raise ValueError(f"image_score must be one of {IMAGE_SCORES}, got {self.image_score!r}")


@dataclass
class AAClipConfig(AdaptedImageConfig):
    """An AA-CLIP detector's settings (stored in checkpoints): the image side plus the text adapter.

    ``adapt_text=False`` builds anchors with plain CLIP text features (what the reference code
    does when no text stage was trained); ``dataset`` also selects the class descriptions, which
    ``class_descriptions`` (class name -> description) overrides.
    """

    text_adapt_weight: float = 0.1
    text_adapt_until: int = 3
    adapt_text: bool = True
    class_descriptions: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.text_adapt_weight <= 1.0:
            raise ValueError(f"text_adapt_weight must lie in [0, 1], got {self.text_adapt_weight}")
        if self.text_adapt_until < 0:
            raise ValueError(f"text_adapt_until must be >= 0, got {self.text_adapt_until}")



@dataclass
class AAClipTrainSettings:
    """Optimisation settings of both stages (reference defaults)."""

    text_epoch: int = 5
    image_epoch: int = 20
    text_lr: float = 1e-5
    image_lr: float = 5e-4
    text_batch_size: int = 16
    image_batch_size: int = 2
    text_norm_weight: float = 0.1
    surgery_until_layer: int = 20
    vv_axis: str = "batch"
    text_loss_levels: str = "last"
    image_milestones: Tuple[int, ...] = (16000, 32000)
    image_lr_gamma: float = 0.5
    seed: int = 111

    def __post_init__(self) -> None:
        if self.text_epoch < 0 or self.image_epoch < 1:
            raise ValueError(f"need text_epoch >= 0 and image_epoch >= 1, got {self.text_epoch}, {self.image_epoch}")
        if self.vv_axis not in VV_AXES:
            raise ValueError(f"vv_axis must be one of {VV_AXES}, got {self.vv_axis!r}")
        if self.text_loss_levels not in TEXT_LOSS_LEVELS:
            raise ValueError(f"text_loss_levels must be one of {TEXT_LOSS_LEVELS}, got {self.text_loss_levels!r}")
        self.image_milestones = tuple(int(m) for m in self.image_milestones)
