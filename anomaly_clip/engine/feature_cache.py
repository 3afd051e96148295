"""Reuse frozen image-tower outputs across epochs.

CLIP is frozen and (without augmentation) sees the same images every epoch, so its outputs
are computed in the first epoch and replayed afterwards: later epochs decode no image and run
no backbone. :class:`EpochLoader` fixes the per-epoch sample order from ``seed + epoch`` so a
cached run visits batches in exactly the order an uncached run does.

Under ``torchrun`` the global batches are the same and each process takes a part of every one:
an even contiguous slice while the cache fills (or without a cache), then the samples it cached,
so each process caches only its own share of the dataset.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import CACHE_MODES
from .distributed import all_gather_objects, get_rank, get_world_size, is_distributed, shard_range

logger = logging.getLogger(__name__)

AUTO_HOST_LIMIT_BYTES = 8 * 1024 ** 3


class EpochBatchSampler(Sampler[List[int]]):
    """Shuffled batches whose order depends only on ``seed`` and the epoch number."""

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"the batch size must be at least 1, got {batch_size}")
        self.size, self.batch_size, self.seed, self.shuffle = size, batch_size, seed, shuffle
        self.epoch = 0

    def order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[List[int]]:
        order = self.order().tolist()
        for start in range(0, self.size, self.batch_size):
            yield order[start:start + self.batch_size]

    def __len__(self) -> int:
        return (self.size + self.batch_size - 1) // self.batch_size


class FeatureCache:
    """Per-sample tensors (features, masks, labels) stored on the device, in host memory, or on disk.

    It holds every index of a dataset of ``size`` samples, or only those given to :meth:`reserve`
    (a process's share under ``torchrun``; a disk cache then writes to a folder of its own rank).
    """

    def __init__(self, size: int, mode: str = "host", directory: Optional[str | os.PathLike] = None,
                 device: Optional[torch.device] = None):
        if mode not in CACHE_MODES[2:]:
            raise ValueError(f"cache mode must be one of {CACHE_MODES[2:]}, got {mode!r}")
        if mode == "disk" and directory is None:
            raise ValueError("a disk feature cache needs a directory")
        self.size, self.mode, self.device = size, mode, device
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None and is_distributed():
            self.directory = self.directory / f"rank_{get_rank()}"
        self.rows = torch.arange(size)
        self.filled = torch.zeros(size, dtype=torch.bool)
        self.store: Dict[str, torch.Tensor] = {}

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    def reserve(self, indices: torch.Tensor) -> None:
        """Hold only the samples ``indices`` (before anything is stored)."""
        if self.filled.any():
            raise RuntimeError("reserve() must come before the first put()")
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        self.rows = torch.full((self.size,), -1, dtype=torch.long)
        self.rows[indices] = torch.arange(indices.numel())
        self.filled = torch.zeros(indices.numel(), dtype=torch.bool)

    def holds(self, index: int) -> bool:
        return bool(self.rows[index] >= 0)

    def _row(self, indices: torch.Tensor) -> torch.Tensor:
        rows = self.rows[indices.cpu()]
        if bool((rows < 0).any()):
            raise KeyError(f"samples {indices[rows < 0].tolist()} are not held by this cache")
        return rows

    def _allocate(self, name: str, example: torch.Tensor) -> torch.Tensor:
        shape = (self.filled.numel(), *example.shape[1:])
        if self.mode == "device":
            return torch.empty(shape, dtype=example.dtype, device=self.device or example.device)
        if self.mode == "host":
            return torch.empty(shape, dtype=example.dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.bin"
        numel = int(torch.Size(shape).numel())
        storage = torch.from_file(str(path), shared=True, size=numel, dtype=example.dtype)
        return storage.view(shape)

    def put(self, indices: torch.Tensor, values: Dict[str, torch.Tensor]) -> None:
        rows = self._row(indices)
        for name, value in values.items():
            if name not in self.store:
                self.store[name] = self._allocate(name, value)
            target = self.store[name]
            target[rows.to(target.device)] = value.detach().to(target.device)
        self.filled[rows] = True

    def get(self, indices: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Stored rows of ``indices``, on the device they are stored on (the CPU for disk)."""
        rows = self._row(indices)
        return {name: store[rows.to(store.device)] for name, store in self.store.items()}

    def close(self) -> None:
        """Drop stored tensors and delete disk files."""
        self.store.clear()
        if self.mode == "disk" and self.directory is not None:
            for path in self.directory.glob("*.bin"):
                path.unlink()
            if is_distributed() and self.directory.is_dir() and not any(self.directory.iterdir()):
                self.directory.rmdir()


def choose_cache_mode(mode: str, bytes_per_sample: int, size: int, device: torch.device,
                      varies_by_epoch: bool = False) -> str:
    """Resolve ``auto``: the device when it is a GPU with room, host memory up to 8 GiB, else disk.

    Training data that changes every epoch (pseudo-anomalies, augmentation) has no features to
    replay: ``auto`` then means ``off``, and asking for a cache anyway is an error.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"feature cache must be one of {CACHE_MODES}, got {mode!r}")
    if varies_by_epoch:
        if mode not in ("auto", "off"):
            raise ValueError(f"a {mode} feature cache replays the first epoch's image features, but the training "
                             f"images change every epoch (pseudo-anomalies or augmentation); use auto or off")
        if mode == "auto":
            logger.info("Training images change every epoch: image features are recomputed, not cached")
        return "off"
    if mode != "auto":
        return mode
    total = bytes_per_sample * size
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if total < free // 4:
            return "device"
    return "host" if total <= AUTO_HOST_LIMIT_BYTES else "disk"


class EpochLoader:
    """Iterates one epoch of batches; from the second epoch on, served from a :class:`FeatureCache`.

    While the cache is incomplete, batches come from a ``DataLoader`` over ``dataset`` and the
    step function stores what it computed with :meth:`FeatureCache.put`; afterwards batches are
    ``{"index", <cached tensors>}`` read straight from the cache.

    Under ``torchrun`` every batch is this process's part of the global batch of ``batch_size``
    (possibly empty: ``{"index": []}``); every process yields as many batches as a single one.
    With ``whole_batches`` the parts are gathered instead, so that every process steps on the
    whole global batch (for losses that couple a batch's samples) while loading only its part.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, num_workers: int = 0,
                 cache: Optional[FeatureCache] = None, shuffle: bool = True,
                 collate_fn: Optional[Callable[[List[Any]], Any]] = None, whole_batches: bool = False):
        if whole_batches and cache is not None:
            raise ValueError("a loader of whole batches takes no feature cache")
        self.dataset, self.cache = dataset, cache
        self.sampler = EpochBatchSampler(len(dataset), batch_size, seed, shuffle)
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.whole_batches = whole_batches
        if batch_size < get_world_size():
            logger.warning("global batch size %d is smaller than the %d processes: some processes idle",
                           batch_size, get_world_size())

    def set_epoch(self, epoch: int) -> None:
        """Fix this epoch's sample order (and the dataset's augmentation stream, if it has one)."""
        self.sampler.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def parts(self, rank: Optional[int] = None, world_size: Optional[int] = None) -> List[List[int]]:
        """A process's sample indices in each global batch of the epoch (this process's by default)."""
        batches = list(self.sampler)
        if self.cache is not None and self.cache.complete:
            return [[index for index in batch if self.cache.holds(index)] for batch in batches]
        return [[batch[i] for i in shard_range(len(batch), rank, world_size)] for batch in batches]

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        parts = self.parts()
        if self.cache is not None and self.cache.complete:
            for part in parts:
                indices = torch.tensor(part, dtype=torch.long)
                batch = self.cache.get(indices)
                batch["index"] = indices
                yield batch
            return
        if self.cache is not None and is_distributed():
            self.cache.reserve(torch.tensor([index for part in parts for index in part], dtype=torch.long))
        loader = iter(DataLoader(self.dataset, batch_sampler=[part for part in parts if part],
                                 num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                                 collate_fn=self.collate_fn))
        for part in parts:
            batch = next(loader) if part else None
            if self.whole_batches and is_distributed():
                yield concatenate_batches([p for p in all_gather_objects(batch) if p is not None])
            else:
                yield batch if batch is not None else {"index": torch.zeros(0, dtype=torch.long)}


def concatenate_batches(parts: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One collated batch from several: tensors concatenated along dim 0, lists joined."""
    merged = {}
    for name, value in parts[0].items():
        values = [part[name] for part in parts]
        if torch.is_tensor(value):
            merged[name] = torch.cat(values)
        elif isinstance(value, (list, tuple)):
            merged[name] = [item for items in values for item in items]
        else:
            raise TypeError(f"cannot concatenate batch entry {name!r} of type {type(value).__name__}")
    return merged
