"""Residual attention blocks of open_clip re-run by our own forward functions.

The image tower (DPAM), the text tower (deep prompts, adapters) and AA-CLIP's V-V stage all
run CLIP's frozen blocks through these helpers, so the attention kind can change without
patching open_clip modules.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_KINDS = ("qk", "vv", "qq", "kk")


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
