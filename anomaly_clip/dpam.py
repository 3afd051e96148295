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

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import BlockHook, CLIPBackbone

ATTENTION_KINDS = ("qk", "vv", "qq", "kk")
DPAM_STRUCTURES = ("dual", "single")


@dataclass(frozen=True)
class DPAMConfig:
    """``layers`` counts like the reference code: ``layers=20`` changes the last 19 blocks."""

    layers: int = 20
    attention: str = "vv"
    structure: str = "dual"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS[1:]:
            raise ValueError(f"DPAM attention must be one of {ATTENTION_KINDS[1:]}, got {self.attention!r}")
        if self.structure not in DPAM_STRUCTURES:
            raise ValueError(f"DPAM structure must be one of {DPAM_STRUCTURES}, got {self.structure!r}")
        if self.layers < 1:
            raise ValueError(f"DPAM layers must be >= 1, got {self.layers}")

    def first_block(self, num_blocks: int) -> int:
        """0-based index of the first block that runs DPAM."""
        changed = self.layers - 1
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


def _multihead(block: nn.Module) -> nn.MultiheadAttention:
    attention = getattr(block, "attn", None)
    if not isinstance(attention, nn.MultiheadAttention) or not attention._qkv_same_embed_dim:
        raise TypeError("DPAM needs open_clip ResidualAttentionBlock with a packed nn.MultiheadAttention")
    return attention


def block_attention(block: nn.Module, normed: torch.Tensor, kinds: Sequence[str],
                    attn_mask: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Self-attention outputs of ``block`` on already-normalised input, one per kind.

    The qkv projection is computed once and shared; "qk" is CLIP's own attention, "vv"/"qq"/"kk"
    use one projection as both query and key. Output projection and LayerScale are applied.
    """
    attention = _multihead(block)
    batch, length, width = normed.shape
    heads = attention.num_heads
    qkv = F.linear(normed, attention.in_proj_weight, attention.in_proj_bias)
    qkv = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    projections = {"q": qkv[0], "k": qkv[1], "v": qkv[2]}
    outputs = []
    for kind in kinds:
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
        query, key = projections[kind[0]], projections[kind[1]]
        mixed = F.scaled_dot_product_attention(query, key, projections["v"], attn_mask=attn_mask)
        mixed = mixed.transpose(1, 2).reshape(batch, length, width)
        outputs.append(block.ls_1(attention.out_proj(mixed)))
    return outputs


def mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def run_block(block: nn.Module, x: torch.Tensor, attention: str = "qk",
              attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One residual block (batch first) with the given attention kind and its MLP."""
    (attended,) = block_attention(block, block.ln_1(x), (attention,), attn_mask)
    return mlp_residual(block, x + attended)


def encode_image(backbone: CLIPBackbone, images: torch.Tensor, layers: Sequence[int] = (),
                 dpam: Optional[DPAMConfig] = None, after_block: Optional[BlockHook] = None,
                 ) -> VisualFeatures:
    """One batched pass of the image tower returning the global embedding and per-layer tokens.

    ``layers`` are 1-based block numbers (24 = the last block of ViT-L). With DPAM, tokens of
    DPAM blocks come from the V-V path; ``after_block(i, x)`` transforms the main path after
    0-based block ``i`` (adapters).
    """
    blocks = backbone.visual.transformer.resblocks
    wanted = set(int(layer) for layer in layers)
    bad = [layer for layer in wanted if not 1 <= layer <= len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} outside 1..{len(blocks)}")
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
    side = int(round((tokens.shape[1] - 1) ** 0.5))
    if side * side != tokens.shape[1] - 1:
        raise ValueError(f"{tokens.shape[1] - 1} patch tokens do not form a square grid")
    return side, side
