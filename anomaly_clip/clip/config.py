"""What determines the frozen CLIP (imports no torch, so the command line can read it)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Optional

from ..settings import setting

ACTIVATIONS = ("quick_gelu", "gelu")
# How the grid of position embeddings is resized to another input size (F.interpolate modes;
# "_antialias" adds ``antialias=True``, whose bicubic kernel differs from the plain one even when
# upsampling). AnomalyCLIP's code resizes "bilinear"; AA-CLIP's, through its open_clip copy,
# "bicubic_antialias". Checkpoints record the rule they were trained with.
POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic", "bicubic_antialias")

# heads every table, and marks every output file, computed with an untrained backbone
RANDOM_WEIGHTS_WARNING = "random (untrained) CLIP weights: these numbers are meaningless"

# The tiny backbone: a small ViT (``model_configs/anomaly-clip-tiny.json``: 24 image blocks of
# width 48, 12 text blocks of width 32, patch 14) with random weights, at 112 px. It needs no
# download and trains and predicts in seconds on a CPU, so every command can be tried on one's own
# images without CLIP weights; its numbers are meaningless. ``--tiny`` on the command line.
TINY_MODEL_NAME = "anomaly-clip-tiny"
TINY_BACKBONE = {"model_name": TINY_MODEL_NAME, "pretrained": None, "weights_path": None, "random_init": True,
                 "image_size": 112}


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that determines what the frozen CLIP computes.

    ``activation`` is explicit because OpenAI weights were trained with QuickGELU while
    open_clip's plain configs build exact GELU; each method records the one its published
    numbers came from. ``pos_embed_interpolation`` likewise differs between the two methods.
    ``download`` decides whether uncached pretrained weights are fetched: ``None`` only when a
    quick connection check passes (no retry loops when offline), ``True`` always, ``False`` never.
    It is a choice of the run, not of the model: :meth:`to_dict` leaves it out, so a checkpoint
    never carries one machine's network setting to another.
    """

    model_name: str = setting("ViT-L-14-336", "open_clip model name", aliases=("model",))
    pretrained: Optional[str] = setting("openai", "open_clip pretrained tag")
    weights_path: Optional[str] = setting(None, "local CLIP weights: OpenAI file (e.g. ViT-L-14-336px.pt) or open_clip "
                                                "checkpoint", aliases=("weights",), metavar="FILE")
    random_init: bool = setting(False, "untrained backbone, for tests and smoke runs only (numbers are meaningless)")
    activation: str = setting("quick_gelu", "MLP activation of the backbone (default: the method's official setting)",
                              choices=ACTIVATIONS)
    image_size: int = setting(518, "input resolution", aliases=("img_size",))
    pos_embed_interpolation: str = setting("bilinear", "position-embedding resize mode (default: the method's "
                                                       "official setting)", choices=POS_EMBED_INTERPOLATIONS)
    cache_dir: Optional[str] = setting(None, "open_clip/Hugging Face cache folder for pretrained tags", metavar="DIR")
    download: Optional[bool] = setting(None, "download uncached pretrained weights: unset = only when the hub answers "
                                             "a quick connection check; --offline never", flag=False)
    random_seed: int = setting(0, flag=False)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}, "
                f"got {self.pos_embed_interpolation!r}"
            )
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.download not in (None, True, False):
            raise ValueError(f"download must be None (automatic), True or False, got {self.download!r}")

    def to_dict(self) -> dict:
        values = asdict(self)
        del values["download"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "BackboneConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def with_updates(self, **changes) -> "BackboneConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def tiny(self) -> "BackboneConfig":
        """This config on the tiny random backbone (:data:`TINY_BACKBONE`: ``anomaly-clip-tiny``,
        random weights, 112 px); the method's activation and position-embedding resize are kept.
        For trying the pipeline without CLIP weights: its numbers are meaningless."""
        return replace(self, **TINY_BACKBONE)

    @property
    def is_tiny(self) -> bool:
        return self.model_name == TINY_MODEL_NAME
