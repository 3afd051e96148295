"""Mixed precision: autocast for the heavy encoders, float32 where rounding would change results.

Scaled cosine similarities (``cos / 0.07``, ``100 * cos``), their softmax and map smoothing are
computed in float32 even inside an autocast region: bf16 there visibly changes anomaly maps.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

from .config import PRECISIONS



def autocast_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """Mixed-precision dtype for ``precision`` on ``device``; None means full float32.

    ``auto`` uses bfloat16 on CUDA devices that support it (float16 otherwise) and float32 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, precision: str = "auto"):
    """Context manager running the enclosed forward in the chosen precision."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def float32_einsum(equation: str, *operands: torch.Tensor) -> torch.Tensor:
    """``torch.einsum`` in float32 whatever autocast is active."""
    with torch.autocast(operands[0].device.type, enabled=False):
        return torch.einsum(equation, *(operand.float() for operand in operands))
