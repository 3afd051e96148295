"""Ranks of a few query scores among many item scores: the primitive behind every exact ranking metric.

AUROC, AP, F1-max and the exact PRO curve only change at scores of positive items (anomalous
pixels or images); between two of them the curves are straight. So every one of them follows
from the distinct positive scores and, for each, how many items score strictly higher and
how many score equal (:func:`count_greater_equal`). That needs one sort of the item scores,
as plain values (on the CPU NumPy's vectorised in-place sort, several times faster than
``torch.sort``; elsewhere ``torch.sort`` on the tensors' device), plus binary searches for the
queries; all further arithmetic runs on the positives only.

Memory stays bounded for any number of float32 (or narrower) scores: when there are more than
``block_size``, a histogram of order-preserving 32-bit keys (top 16 bits, refined by the low 16
bits where one bin alone is too big) splits the score range into consecutive blocks of at most
``block_size`` items, gathered and sorted one after another; a single score shared by more items
than that is counted without sorting. float64 scores are sorted in one block.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

DEFAULT_BLOCK_SIZE = 1 << 26
"""Scores sorted at once (256 MB as float32, 250 maps of 518 x 518); larger sets are ranked in blocks."""

_PIECE = 1 << 22
_BINS = 1 << 16
_NARROW = (torch.float16, torch.bfloat16, torch.float32, torch.bool, torch.uint8, torch.int8, torch.int16)


def key_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float type in which scores of ``dtype`` are ranked exactly: float32 when it holds them all."""
    return torch.float32 if dtype in _NARROW else torch.float64


def order_keys(values: Tensor) -> Tensor:
    """int32 keys with the order of float32-representable ``values``; equal values (0.0 and -0.0
    included) get equal keys. NaN must be excluded beforehand."""
    bits = (values.to(torch.float32) + 0.0).view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def sort_ascending_(values: Tensor) -> Tensor:
    """Ascending sort of a 1-D tensor owned by the caller (in place on the CPU)."""
    if values.device.type == "cpu":
        values.numpy().sort()
        return values
    return torch.sort(values).values


def flat_pieces(chunks: Sequence[Tensor]) -> Iterator[Tensor]:
    """Consecutive flat pieces of a few million items: they bound the temporaries of each pass."""
    for chunk in chunks:
        flat = chunk.reshape(-1)
        for start in range(0, flat.numel(), _PIECE):
            yield flat[start:start + _PIECE]


def count_greater_equal(chunks: Sequence[Tensor], queries: Tensor,
                        block_size: int = DEFAULT_BLOCK_SIZE) -> Tuple[Tensor, Tensor]:
    """For each query score, how many items score strictly higher and how many score equal.

    ``chunks``: tensors of item scores (any shape, compared exactly in :func:`key_dtype`);
    ``queries``: 1-D scores. Returns two int64 tensors shaped like ``queries``.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    dtype = torch.float64 if any(key_dtype(c.dtype) == torch.float64 for c in chunks) else torch.float32
    device = chunks[0].device
    queries = queries.to(device, dtype)
    total = sum(chunk.numel() for chunk in chunks)
    if total <= block_size or dtype == torch.float64:
        return _block_counts(_gather(chunks, total, dtype), queries, 0)
    blocks = _plan_blocks(chunks, block_size)
    floors = torch.tensor([block.floor for block in blocks], dtype=dtype, device=device)
    owner = torch.searchsorted(floors, queries, right=True) - 1
    greater = torch.zeros(queries.shape, dtype=torch.int64, device=device)
    equal = torch.zeros_like(greater)
    below = 0  # items in the blocks already passed, i.e. scoring lower
    for index, block in enumerate(blocks):
        inside = (owner == index).nonzero().squeeze(1)
        if inside.numel():
            above = total - below - block.count
            if block.tie_value is not None:
                greater[inside] = above + block.count * (queries[inside] < block.tie_value)
                equal[inside] = block.count * (queries[inside] == block.tie_value)
            else:
                ceiling = blocks[index + 1].floor if index + 1 < len(blocks) else math.inf
                values = _gather(chunks, block.count, dtype, block.floor, ceiling)
                greater[inside], equal[inside] = _block_counts(values, queries[inside], above)
        below += block.count
    return greater, equal


def _block_counts(values: Tensor, queries: Tensor, above: int) -> Tuple[Tensor, Tensor]:
    ordered = sort_ascending_(values)
    left = torch.searchsorted(ordered, queries)
    right = torch.searchsorted(ordered, queries, right=True)
    return above + ordered.numel() - right, right - left


def _gather(chunks: Sequence[Tensor], count: int, dtype: torch.dtype, floor: float = -math.inf,
            ceiling: float = math.inf) -> Tensor:
    """A fresh 1-D copy of the scores in ``[floor, ceiling)``."""
    out = torch.empty(count, dtype=dtype, device=chunks[0].device)
    filled = 0
    for piece in flat_pieces(chunks):
        piece = piece.to(dtype)
        if floor > -math.inf and ceiling < math.inf:
            piece = piece[(piece >= floor) & (piece < ceiling)]
        elif floor > -math.inf:
            piece = piece[piece >= floor]
        elif ceiling < math.inf:
            piece = piece[piece < ceiling]
        out[filled:filled + piece.numel()] = piece
        filled += piece.numel()
    if filled != count:
        raise RuntimeError(f"gathered {filled} scores where {count} were counted")
    return out


@dataclass
class _Block:
    """Items with keys in ``[low, high]`` (scores from ``floor`` up to the next block's floor);
    ``tie_value`` is set for a block too big to sort, whose items all share that one score."""

    low: int
    high: int
    count: int
    tie_value: Optional[float] = None

    @property
    def floor(self) -> float:
        return -math.inf if self.low == -(1 << 31) else _key_value(self.low)


def _plan_blocks(chunks: Sequence[Tensor], block_size: int) -> List[_Block]:
    """Consecutive key ranges, lowest scores first, of at most ``block_size`` items, covering all keys.

    Every range starts at a key of a scored item or of a histogram bin holding one, so its floor
    is a finite score and ``floor <= score < next floor`` selects exactly the range's items.
    """
    coarse = _coarse_histogram(chunks)
    oversized = (coarse > block_size).nonzero().squeeze(1).tolist()
    fine = dict(zip(oversized, _fine_histograms(chunks, oversized))) if oversized else {}
    units: List[_Block] = []
    for top in coarse.nonzero().squeeze(1).tolist():
        base = (top - _BINS // 2) << 16
        if top in fine:
            units += [_Block(base + low, base + low, int(fine[top][low]))
                      for low in fine[top].nonzero().squeeze(1).tolist()]
        else:
            units.append(_Block(base, base + _BINS - 1, int(coarse[top])))
    blocks: List[_Block] = []
    for unit in units:
        last = blocks[-1] if blocks else None
        if unit.count > block_size:
            blocks.append(_Block(unit.low, unit.high, unit.count, _key_value(unit.low)))
        elif last is not None and last.tie_value is None and last.count + unit.count <= block_size:
            last.high, last.count = unit.high, last.count + unit.count
        else:
            blocks.append(unit)
    # Stretch the ranges over the empty keys around them so that every query key has a block.
    blocks[0].low, blocks[-1].high = -(1 << 31), (1 << 31) - 1
    for block, following in zip(blocks, blocks[1:]):
        block.high = following.low - 1
    return blocks


def _coarse_histogram(chunks: Sequence[Tensor]) -> Tensor:
    """Item counts per top-16-bit bin of the :func:`order_keys` (65536 bins, ascending)."""
    counts = torch.zeros(_BINS, dtype=torch.int64, device=chunks[0].device)
    for piece in flat_pieces(chunks):
        counts += torch.bincount((order_keys(piece) >> 16) + _BINS // 2, minlength=_BINS)
    return counts.cpu()


def _fine_histograms(chunks: Sequence[Tensor], bins: List[int]) -> List[Tensor]:
    """For each of the given top-16-bit bins, item counts per low-16-bit key value (one pass for all)."""
    device = chunks[0].device
    slot_of = torch.full((_BINS,), -1, dtype=torch.int64, device=device)
    slot_of[torch.tensor(bins, device=device)] = torch.arange(len(bins), device=device)
    counts = torch.zeros(len(bins) * _BINS, dtype=torch.int64, device=device)
    for piece in flat_pieces(chunks):
        keys = order_keys(piece)
        slot = slot_of[(keys >> 16) + _BINS // 2]
        chosen = slot >= 0
        counts += torch.bincount(slot[chosen] * _BINS + (keys[chosen] & 0xFFFF), minlength=counts.numel())
    return list(counts.cpu().view(len(bins), _BINS))


def _key_value(key: int) -> float:
    """The float32 score of an :func:`order_keys` key (keys beyond the infinities give them)."""
    bits = torch.tensor([key], dtype=torch.int32)
    value = float((bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(torch.float32))
    return value if not math.isnan(value) else math.copysign(math.inf, key)
