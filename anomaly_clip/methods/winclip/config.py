"""WinCLIP settings: the one place their defaults are written (anomalib's ``WinClipModel``; imports no torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Tuple

from ...engine.config import MethodConfig, setting

OFFICIAL_BACKBONE: Dict[str, Any] = {"model_name": "ViT-B-16-plus-240", "pretrained": "laion400m_e31",
                                     "activation": "gelu", "image_size": 240,
                                     "pos_embed_interpolation": "bicubic_antialias"}
"""ViT-B/16+ at its native 240 px (no position resize) with LAION-400M weights and open_clip's own
exact GELU; at other sizes the grid is resized as open_clip resizes it (bicubic, antialiased)."""


@dataclass
class WinCLIPConfig(MethodConfig):
    """WinCLIP / WinCLIP+ settings (anomalib ``WinClipModel``).

    ``scales``: window sides in patches (2 and 3 at 240 px with ViT-B/16+: a 15 x 15 grid);
    ``window_stride``: window step in patches; ``temperature``: the fixed 0.07 of every score (not
    the model's logit scale). ``max_window_tokens`` bounds the tokens of one transformer pass over
    windows (speed/memory only: results do not depend on it beyond float rounding).
    """

    backbone_defaults: ClassVar[Dict[str, Any]] = OFFICIAL_BACKBONE

    scales: Tuple[int, ...] = setting((2, 3), "window sides in patches")
    window_stride: int = setting(1, "window step in patches")
    temperature: float = setting(0.07, "softmax temperature of every score (WinCLIP: fixed 0.07, not the "
                                       "model's logit scale)")
    max_window_tokens: int = setting(1 << 16, "tokens per transformer pass over windows: memory against speed, "
                                              "same results")

    def __post_init__(self) -> None:
        self.scales = tuple(int(scale) for scale in self.scales)
        if not self.scales or min(self.scales) < 1 or len(set(self.scales)) != len(self.scales):
            raise ValueError(f"scales must be distinct positive window sides, got {self.scales}")
        if self.window_stride < 1:
            raise ValueError(f"window_stride must be positive, got {self.window_stride}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.max_window_tokens < 1:
            raise ValueError(f"max_window_tokens must be positive, got {self.max_window_tokens}")


DEFAULTS = WinCLIPConfig()
