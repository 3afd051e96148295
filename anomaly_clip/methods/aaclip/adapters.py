"""AA-CLIP's trainable parts: norm-matched residual adapters and bias-free projections.

A residual adapter nudges a frozen block's output towards anomaly awareness without letting it
drift in scale: the adapter output is rescaled to the input token's norm and blended in with a
small weight (``x <- w * a + (1 - w) * x``), so CLIP's own features dominate. Every size comes
from the backbone's widths, so any open_clip ViT works, not only ViT-L/14.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-12


class ResidualAdapter(nn.Module):
    """``a = LeakyReLU(W x)`` (no bias), rescaled per token to ``|x|``, blended with weight ``weight``."""

    def __init__(self, width: int, weight: float = 0.1):
        super().__init__()
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"adapter weight must lie in [0, 1], got {weight}")
        self.linear = nn.Linear(width, width, bias=False)
        self.blend_weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapted = F.leaky_relu(self.linear(x))
        scale = x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)
        return self.blend_weight * adapted * scale + (1.0 - self.blend_weight) * x


class TokenProjection(nn.Module):
    """Bias-free linear map into the joint space, optionally followed by LeakyReLU."""

    def __init__(self, in_width: int, out_width: int, activation: bool = False):
        super().__init__()
        self.linear = nn.Linear(in_width, out_width, bias=False)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return F.leaky_relu(x) if self.activation else x


class ResidualAdapters(nn.Module):
    """Adapters after the first ``count`` transformer blocks; usable as a block hook."""

    def __init__(self, width: int, count: int, weight: float = 0.1):
        super().__init__()
        if count < 0:
            raise ValueError(f"adapter count must be >= 0, got {count}")
        self.adapters = nn.ModuleList(ResidualAdapter(width, weight) for _ in range(count))

    def __len__(self) -> int:
        return len(self.adapters)

    def after_block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """Hook for 0-based block ``index``: adapt while ``index < count``, pass through after."""
        return self.adapters[index](x) if index < len(self.adapters) else x


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform every weight matrix, as the official code initialises its adapters."""
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


class TextAdapter(nn.Module):
    """Residual adapters on the first text blocks and a trainable replacement of the text
    projection (``LeakyReLU(Linear(text_width, embed_dim))`` on the pooled ``ln_final`` feature)."""

    def __init__(self, text_width: int, embed_dim: int, count: int = 3, weight: float = 0.1):
        super().__init__()
        self.blocks = ResidualAdapters(text_width, count, weight)
        self.projection = TokenProjection(text_width, embed_dim, activation=True)
        xavier_init(self)


class ImageAdapter(nn.Module):
    """Residual adapters on the first visual blocks, one patch projection per feature level and a
    detection projection whose normalised patch outputs, averaged, give the image feature."""

    def __init__(self, vision_width: int, embed_dim: int, features_list: Sequence[int], count: int = 6,
                 weight: float = 0.1, activation: bool = False):
        super().__init__()
        if not features_list:
            raise ValueError("the image adapter needs at least one feature level")
        self.features_list: Tuple[int, ...] = tuple(int(level) for level in features_list)
        self.blocks = ResidualAdapters(vision_width, count, weight)
        self.level_projections = nn.ModuleList(
            TokenProjection(vision_width, embed_dim, activation) for _ in self.features_list
        )
        self.detection_projection = TokenProjection(vision_width, embed_dim, activation)
        xavier_init(self)

    def forward(self, level_patches: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Map ``ln_post``-normalised patch tokens (one (B, N, W) tensor per level, in level order)
        to unit-norm patch features per level and the (B, E) detection feature of the last level.

        The detection feature is the mean of unit vectors and is deliberately not renormalised
        (image scores and the classification loss are computed on it as is).
        """
        if len(level_patches) != len(self.features_list):
            raise ValueError(f"expected {len(self.features_list)} feature levels, got {len(level_patches)}")
        patch_features = [F.normalize(projection(tokens), dim=-1)
                          for projection, tokens in zip(self.level_projections, level_patches)]
        detection = F.normalize(self.detection_projection(level_patches[-1]), dim=-1).mean(dim=1)
        return patch_features, detection
