"""Ranks of a few query scores among many item scores: the primitive behind every exact ranking metric.

AUROC, AP, F1-max and the exact PRO curve only change at scores of positive items (anomalous
pixels or images); between two of them the curves are straight. So every one of them follows
from the distinct positive scores and, for each, how many items score strictly higher and
how many score equal (:func:`count_greater_equal`). That needs one sort of the item scores,
as plain values (on the CPU NumPy's vectorised in-place sort, several times faster than
``torch.sort``; elsewhere ``torch.sort`` on the tensors' device), plus binary searches for the
queries; all further arithmetic runs on the positives only.

Memory stays bounded for any number of items: when there are more than ``block_size``, a
histogram of order-preserving integer keys (top 16 bits first, refined 16 bits at a time
where one bin alone is too big) splits the score range into consecutive blocks of at most
``block_size`` items that are gathered and sorted one after another; a single score shared by
more items than that is counted without sorting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

DEFAULT_BLOCK_SIZE = 1 << 27
"""Scores sorted at once (512 MB as float32); larger sets are ranked in blocks of this many."""

_PIECE = 1 << 22
_BIN_BITS = 16
_MAX_BINS = 1 << 24
_NARROW = (torch.float16, torch.bfloat16, torch.float32, torch.bool, torch.uint8, torch.int8, torch.int16)


def key_dtype(dtype: torch.dtype) -> torch.dtype:
    """Float type in which scores of ``dtype`` are ranked exactly: float32 when it holds them all."""
    return torch.float32 if dtype in _NARROW else torch.float64


def descending_keys(values: Tensor) -> Tensor:
    """int64 keys whose ascending order is the descending order of ``values``.

    Equal values get equal keys (``0.0`` and ``-0.0`` included). NaN must be excluded
    beforehand. Keys of float32-representable scores lie in ``(-2**31, 2**31)``.
    """
    if key_dtype(values.dtype) == torch.float32:
        bits = values.to(torch.float32).view(torch.int32).to(torch.int64)
        magnitude = bits & 0x7FFFFFFF
    else:
        bits = values.to(torch.float64).view(torch.int64)
        magnitude = bits & 0x7FFFFFFFFFFFFFFF
    return torch.where(bits < 0, magnitude, -magnitude)


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
    if total <= block_size:
        return _block_counts(_gather(chunks, total, dtype), queries, 0)
    greater = torch.zeros(queries.shape, dtype=torch.int64, device=device)
    equal = torch.zeros_like(greater)
    query_keys = descending_keys(queries)
    above = 0
    for block in _plan_blocks(chunks, block_size):
        inside = ((query_keys >= block.low) & (query_keys <= block.high)).nonzero().squeeze(1)
        if inside.numel():
            if block.tie_key is not None:
                tie_value = _tie_value(chunks, block.tie_key, dtype)
                higher = queries[inside] < tie_value
                greater[inside] = above + block.count * higher
                equal[inside] = block.count * (queries[inside] == tie_value)
            else:
                values = _gather(chunks, block.count, dtype, block.low, block.high)
                greater[inside], equal[inside] = _block_counts(values, queries[inside], above)
        above += block.count
    return greater, equal


def _block_counts(values: Tensor, queries: Tensor, above: int) -> Tuple[Tensor, Tensor]:
    ordered = sort_ascending_(values)
    left = torch.searchsorted(ordered, queries)
    right = torch.searchsorted(ordered, queries, right=True)
    return above + ordered.numel() - right, right - left


def _gather(chunks: Sequence[Tensor], count: int, dtype: torch.dtype, low: int | None = None,
            high: int | None = None) -> Tensor:
    """A fresh 1-D copy of the scores whose keys lie in ``[low, high]`` (all when None)."""
    out = torch.empty(count, dtype=dtype, device=chunks[0].device)
    filled = 0
    for piece in flat_pieces(chunks):
        if low is not None:
            keys = descending_keys(piece)
            piece = piece[(keys >= low) & (keys <= high)]
        out[filled:filled + piece.numel()] = piece
        filled += piece.numel()
    if filled != count:
        raise RuntimeError(f"gathered {filled} scores where {count} were counted")
    return out


@dataclass
class _Block:
    """Items with keys in ``[low, high]``; ``width``: keys per histogram bin; ``tie_key``: the one key
    of a block too big to sort, whose items all share one score."""

    low: int
    high: int
    count: int
    width: int = 1
    tie_key: Optional[int] = None


def _plan_blocks(chunks: Sequence[Tensor], block_size: int) -> List[_Block]:
    """Consecutive key ranges (highest scores first) of at most ``block_size`` items, covering all keys."""
    bits = 32 if all(key_dtype(c.dtype) == torch.float32 for c in chunks) else 64
    lowest, highest = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    units = _split_units(chunks, [_Block(lowest, highest, 0, 1 << bits)])[0]
    while any(_too_big(u, block_size) for u in units):
        split = iter(_split_units(chunks, [u for u in units if _too_big(u, block_size)]))
        units = [part for u in units for part in (next(split) if _too_big(u, block_size) else [u])]
    blocks: List[_Block] = []
    for unit in units:
        tie_key = unit.low if unit.count > block_size else None
        last = blocks[-1] if blocks else None
        if last is not None and last.tie_key is None and tie_key is None and last.count + unit.count <= block_size:
            last.high, last.count = unit.high, last.count + unit.count
        else:
            blocks.append(_Block(unit.low, unit.high, unit.count, tie_key=tie_key))
    # Stretch the ranges over the empty keys around them so that every query key has a block.
    blocks[0].low, blocks[-1].high = lowest, highest
    for block, following in zip(blocks, blocks[1:]):
        block.high = following.low - 1
    return blocks


def _too_big(unit: _Block, block_size: int) -> bool:
    return unit.count > block_size and unit.width > 1


def _split_units(chunks: Sequence[Tensor], units: List[_Block]) -> List[List[_Block]]:
    """Split aligned key ranges into their non-empty sub-ranges of 2**16 histogram bins, with counts.

    One pass over the items serves up to a few hundred ranges at once.
    """
    group = max(1, _MAX_BINS >> _BIN_BITS)
    if len(units) > group:
        return _split_units(chunks, units[:group]) + _split_units(chunks, units[group:])
    device = chunks[0].device
    widths = [max(u.width >> _BIN_BITS, 1) for u in units]
    shifts = [w.bit_length() - 1 for w in widths]
    origins = [u.low >> shift for u, shift in zip(units, shifts)]
    bins = [(u.high >> shift) - origin + 1 for u, shift, origin in zip(units, shifts, origins)]
    starts = [sum(bins[:i]) for i in range(len(bins))]
    lows, highs = (torch.tensor(v, device=device) for v in ([u.low for u in units], [u.high for u in units]))
    shift_of, base_of = torch.tensor(shifts, device=device), torch.tensor(
        [start - origin for start, origin in zip(starts, origins)], device=device)
    counts = torch.zeros(sum(bins), dtype=torch.int64, device=device)
    for piece in flat_pieces(chunks):
        keys = descending_keys(piece)
        slot = (torch.searchsorted(lows, keys, right=True) - 1).clamp_(min=0)
        keep = (keys >= lows[slot]) & (keys <= highs[slot])
        keys, slot = keys[keep], slot[keep]
        counts += torch.bincount((keys >> shift_of[slot]) + base_of[slot], minlength=counts.numel())
    counts = counts.cpu()
    parts = []
    for unit, width, shift, origin, start, size in zip(units, widths, shifts, origins, starts, bins):
        local = counts[start:start + size]
        parts.append([_Block(max((origin + b) << shift, unit.low), min(((origin + b + 1) << shift) - 1, unit.high),
                             int(local[b]), width) for b in local.nonzero().squeeze(1).tolist()])
    return parts


def _tie_value(chunks: Sequence[Tensor], key: int, dtype: torch.dtype) -> Tensor:
    for piece in flat_pieces(chunks):
        match = (descending_keys(piece) == key).nonzero()
        if match.numel():
            return piece[match[0, 0]].to(dtype)
    raise RuntimeError("a counted score vanished")
