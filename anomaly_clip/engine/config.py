"""The settings every method shares: the base of method configs and :class:`TrainConfig`
(no torch import; fields are declared with :func:`anomaly_clip.settings.setting`)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional

from ..settings import block_numbers, check_choice, field_values, setting  # noqa: F401 - re-exported

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CACHE_MODES = ("auto", "off", "device", "host", "disk")
METRIC_LEVELS = ("image-level", "pixel-level", "image-pixel-level")
MAP_FORMATS = ("npz", "png16")
DIST_TIMEOUT_S = 600.0  # seconds a torchrun process waits in a collective for the others
MAP_DTYPES = ("float32", "float16")
OVERLAY_FORMATS = ("jpg", "png")


@dataclass
class MethodConfig:
    """Base of the per-method detector settings (stored in checkpoints as ``method_config``).

    Subclasses say which backbone settings their method's official code uses
    (:attr:`backbone_defaults`, e.g. the MLP activation), so a fresh detector and a loaded one
    build the same frozen CLIP.
    """

    backbone_defaults: ClassVar[Dict[str, Any]] = {}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[Mapping[str, Any]]) -> "MethodConfig":
        """Settings from a checkpoint or file; former field names are accepted (see :func:`setting`)."""
        return cls(**field_values(cls, values))


@dataclass
class TrainConfig:
    """One training run, whatever the method: where it writes, how it repeats, how it runs.

    ``method`` holds the method's own optimisation settings (epochs, learning rates, batch sizes:
    its ``training_config`` dataclass); ``None`` means the method's official defaults.
    ``run_settings`` are stored in every checkpoint so a run can be traced (the command line
    puts its resolved flags there).
    """

    save_path: str = setting("./checkpoints", "folder for checkpoints, logs and the per-epoch metrics file")
    seed: int = setting(111, "random seed (sample order, initialisation, augmentation)")
    print_freq: int = setting(1, "log every N epochs")
    save_freq: int = setting(1, "checkpoint every N epochs")
    resume: bool = setting(False, "continue from the last checkpoint in --save_path")
    precision: str = setting("fp32", "fp32 (the official runs train in float32), or mixed precision for speed: "
                                     "auto = bf16/fp16 autocast on GPU, fp32 on CPU; bf16; fp16 (see "
                                     "docs/protocols.md for what it may change)", choices=PRECISIONS)
    init_checkpoint: Optional[str] = setting(None, "start from the learnt weights of this checkpoint (ours or "
                                                   "official, same method): fine-tuning, e.g. a released model on "
                                                   "TN3K's training split", metavar="CKPT")
    export_official: bool = setting(True, "also write checkpoints in the official code's format", flag=False)
    num_workers: int = setting(2, "data-loading worker processes")
    method: Any = setting(None, flag=False)
    run_settings: Dict[str, Any] = setting(default_factory=dict, flag=False)

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        if self.print_freq < 1 or self.save_freq < 1:
            raise ValueError(f"print_freq and save_freq must be >= 1, got {self.print_freq}, {self.save_freq}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
