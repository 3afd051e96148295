"""DPAM: diagonally prominent attention maps (V-V self-attention) in CLIP's image tower.

Plain CLIP attention (Q-K) lets each patch attend to a few global "sink" tokens, which blurs
local detail. Replacing both queries and keys with values (V-V) keeps attention diagonal, so
patch tokens stay local and segment anomalies. Two structures are used by the two methods:

* ``dual`` (AnomalyCLIP): the unchanged CLIP path runs on; beside it a V-V path, seeded with
  the hidden state entering the first DPAM block, adds V-V attention computed on
  ``ln_1`` of the *original* path and skips the MLP. Patch tokens come from the V-V path,
  the global embedding from the original path (class token ``@ proj`` without ``ln_post``).
* ``single`` (AA-CLIP's stage-1 feature extractor): V-V simply replaces Q-K attention and the
  MLP is kept.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from .backbone import BlockHook, CLIPBackbone
from .blocks import ATTENTION_KINDS, block_attention, mlp_residual, run_block

DPAM_STRUCTURES = ("dual", "single")


@dataclass(frozen=True)
class DPAMConfig:
    """``dpam_layers`` counts like the official code: ``dpam_layers=20`` changes the last 19 blocks."""

    dpam_layers: int = 20
    attention: str = "vv"
    structure: str = "dual"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS[1:]:
            raise ValueError(f"DPAM attention must be one of {ATTENTION_KINDS[1:]}, got {self.attention!r}")
        if self.structure not in DPAM_STRUCTURES:
            raise ValueError(f"DPAM structure must be one of {DPAM_STRUCTURES}, got {self.structure!r}")
        if self.dpam_layers < 1:
            raise ValueError(f"dpam_layers must be >= 1, got {self.dpam_layers}")

    def first_block(self, num_blocks: int) -> int:
        """0-based index of the first block that runs DPAM."""
        changed = self.dpam_layers - 1
        if changed > num_blocks:
            raise ValueError(f"DPAM asks for {changed} blocks but the image tower has {num_blocks}")
        return num_blocks - changed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class VisualFeatures:
    """Output of one image-tower pass.

    ``global_embedding``: (B, E) image embedding. ``layer_tokens``: hidden states (B, 1+N, W)
    after each requested block (1-based block number -> tokens, class token first), before
    ``ln_post``; use :meth:`CLIPBackbone.project_tokens` to map them to the joint space.
    """

    global_embedding: torch.Tensor
    layer_tokens: Dict[int, torch.Tensor]


def encode_image(backbone: CLIPBackbone, images: torch.Tensor, features_list: Sequence[int] = (),
                 dpam: Optional[DPAMConfig] = None, after_block: Optional[BlockHook] = None,
                 ) -> VisualFeatures:
    """One batched pass of the image tower returning the global embedding and per-layer tokens.

    ``features_list`` holds 1-based block numbers (24 = the last block of ViT-L). With DPAM, tokens of
    DPAM blocks come from the V-V path; ``after_block(i, x)`` transforms the main path after
    0-based block ``i`` (adapters).
    """
    blocks = backbone.visual.transformer.resblocks
    wanted = set(int(layer) for layer in features_list)
    bad = [layer for layer in wanted if not 1 <= layer <= len(blocks)]
    if bad:
        raise ValueError(f"features_list {bad} outside 1..{len(blocks)}")
    first_dpam = dpam.first_block(len(blocks)) if dpam is not None else len(blocks)
    dual = dpam is not None and dpam.structure == "dual"

    x = backbone.embed_image(images)
    side_path: Optional[torch.Tensor] = None
    layer_tokens: Dict[int, torch.Tensor] = {}
    for index, block in enumerate(blocks):
        if index < first_dpam:
            x = run_block(block, x)
        elif dual:
            side_path = x if side_path is None else side_path
            original, local = block_attention(block, block.ln_1(x), ("qk", dpam.attention))
            side_path = side_path + local
            x = mlp_residual(block, x + original)
        else:
            x = run_block(block, x, attention=dpam.attention)
        if after_block is not None:
            x = after_block(index, x)
        if index + 1 in wanted:
            layer_tokens[index + 1] = side_path if side_path is not None else x

    if dual:
        global_embedding = x[:, 0] @ backbone.visual.proj
    else:
        global_embedding = backbone.project_tokens(x[:, 0])
    return VisualFeatures(global_embedding=global_embedding, layer_tokens=layer_tokens)


def patch_grid(tokens: torch.Tensor) -> Tuple[int, int]:
    """Grid side of (B, 1+N, C) tokens with a class token first."""
    side = math.isqrt(int(tokens.shape[1]) - 1)
    if side * side != tokens.shape[1] - 1:
        raise ValueError(f"{tokens.shape[1] - 1} patch tokens do not form a square grid")
    return side, side
