"""Input checks shared by the metric functions: clear errors instead of silently wrong numbers."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor

TensorOrChunks = Union[Tensor, Sequence[Tensor]]


def as_chunks(data: TensorOrChunks, name: str) -> List[Tensor]:
    """A list of tensors: one tensor, or the pieces of a stack kept apart to avoid a concatenated copy."""
    chunks = [data] if isinstance(data, Tensor) else list(data)
    if not chunks:
        raise ValueError(f"{name} is empty")
    for chunk in chunks:
        if not isinstance(chunk, Tensor):
            raise TypeError(f"{name} must be a tensor or a sequence of tensors, got {type(chunk).__name__}")
    return chunks


def as_maps(data: TensorOrChunks, name: str = "maps") -> List[Tensor]:
    """Anomaly maps as ``[N, H, W]`` chunks (a channel axis of size 1 is dropped)."""
    chunks = [_drop_channel(chunk) for chunk in as_chunks(data, name)]
    shapes = {tuple(chunk.shape[1:]) for chunk in chunks}
    if any(chunk.dim() != 3 for chunk in chunks) or len(shapes) != 1:
        raise ValueError(f"{name} must be [N, H, W] tensors of one image size, got {[tuple(c.shape) for c in chunks]}")
    for chunk in chunks:
        if chunk.is_complex() or chunk.dtype == torch.bool:
            raise TypeError(f"{name} must hold real scores, got {chunk.dtype}")
    return chunks


def as_masks(data: TensorOrChunks, maps: Sequence[Tensor], name: str = "masks") -> List[Tensor]:
    """Binary masks as bool ``[N, H, W]`` chunks matching ``maps`` chunk by chunk."""
    chunks = [as_binary(_drop_channel(chunk), name) for chunk in as_chunks(data, name)]
    if [tuple(c.shape) for c in chunks] != [tuple(m.shape) for m in maps]:
        raise ValueError(f"{name} shapes {[tuple(c.shape) for c in chunks]} do not match the maps' "
                         f"{[tuple(m.shape) for m in maps]}")
    return chunks


def as_binary(labels: Tensor, name: str) -> Tensor:
    """Bool tensor from bool, integer or float 0/1 values; anything else is an error."""
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    if labels.dtype == torch.bool:
        return labels
    binary = labels != 0
    if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1")
    return binary


def as_scores(scores: Tensor, name: str = "scores") -> Tensor:
    """Real, finite 1-D scores."""
    if not isinstance(scores, Tensor):
        scores = torch.as_tensor(scores)
    if scores.is_complex() or scores.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {scores.dtype}")
    if scores.numel():
        check_finite(scores, name)
    return scores.reshape(-1)


def check_finite(values: Tensor, name: str) -> None:
    finite_range([values], name)


def finite_range(chunks: Sequence[Tensor], name: str) -> Tuple[float, float]:
    """Minimum and maximum over all chunks in one reduction pass; NaN or infinity is an error."""
    extremes = [float(v) for chunk in chunks if chunk.numel() for v in torch.aminmax(chunk.reshape(-1))]
    if not extremes:
        raise ValueError(f"{name} are empty")
    if not all(math.isfinite(v) for v in extremes):
        raise ValueError(f"{name} contain NaN or infinite values; metrics are undefined for them")
    return min(extremes), max(extremes)


def _drop_channel(chunk: Tensor) -> Tensor:
    if not isinstance(chunk, Tensor):
        chunk = torch.as_tensor(chunk)
    return chunk.squeeze(1) if chunk.dim() == 4 and chunk.shape[1] == 1 else chunk
