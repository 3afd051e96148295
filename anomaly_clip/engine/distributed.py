"""One process per device under ``torchrun``: process group, ranks, sharding and gathers.

A run launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) joins the process group
in :func:`init_distributed` (NCCL for GPUs, gloo for the CPU) and each process takes the GPU of
its local rank. In any other launch nothing is initialised and every helper here acts as the
single process of a world of one, so the engine runs the same code either way.

Shards are contiguous and given in rank order, so concatenating per-rank results in rank order
restores the original order (:func:`shard_range`, :func:`gather_in_order`).
"""
from __future__ import annotations

import atexit
import logging
from datetime import timedelta
from typing import Any, Iterable, List, Optional, Sequence, Tuple, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from ..devices import launched_by_torchrun, resolve_device
from .config import DIST_TIMEOUT_S

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = timedelta(seconds=DIST_TIMEOUT_S)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0, the one process that writes results, logs and checkpoints."""
    return get_rank() == 0


def init_distributed(device: str | torch.device = "auto", timeout: timedelta | float = DEFAULT_TIMEOUT) -> str:
    """Join ``torchrun``'s process group when launched by it and return this process's device.

    Outside ``torchrun`` the device is checked (:func:`~anomaly_clip.devices.resolve_device`) and
    returned as given. The group is joined once per process (NCCL when the device is a GPU, gloo
    otherwise) and left at exit. ``timeout`` (a ``timedelta`` or seconds) bounds how long a
    collective waits for the other processes: a stopped or hung process then ends the run with
    an error instead of holding the others.
    """
    resolved = resolve_device(device)
    if not launched_by_torchrun():
        return str(device)
    if not isinstance(timeout, timedelta):
        if not timeout > 0:
            raise ValueError(f"--dist_timeout must be a positive number of seconds, got {timeout}")
        timeout = timedelta(seconds=float(timeout))
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timeout)
        atexit.register(_leave_process_group)
        logger.debug("rank %d of %d joined the %s process group on %s", dist.get_rank(), dist.get_world_size(),
                     backend, resolved)
    return str(resolved)


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process reaches this point (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


def _communication_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- objects ------------------------------------------------------------------------------------
def all_gather_objects(value: T) -> List[T]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if not is_distributed():
        return [value]
    gathered: List[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_objects(value: T, dst: int = 0) -> Optional[List[T]]:
    """Every process's ``value`` in rank order on process ``dst``; ``None`` on the others."""
    if not is_distributed():
        return [value]
    gathered: Optional[List[Any]] = [None] * get_world_size() if get_rank() == dst else None
    dist.gather_object(value, gathered, dst=dst)
    return gathered


def broadcast_object(value: T, src: int = 0) -> T:
    """Process ``src``'s ``value`` on every process."""
    if not is_distributed():
        return value
    holder = [value if get_rank() == src else None]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


# ---- sharding -----------------------------------------------------------------------------------
def shard_range(count: int, rank: Optional[int] = None, world_size: Optional[int] = None,
                block: int = 1) -> range:
    """This process's contiguous share of ``count`` items, whole blocks of ``block`` items at a time.

    Blocks are split as evenly as possible (shares differ by at most one block); with ``block``
    equal to a batch size every process sees exactly the batches a single process would.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    blocks = -(-count // block)
    first, last = blocks * rank // world_size, blocks * (rank + 1) // world_size
    return range(min(first * block, count), min(last * block, count))


def shard_items(items: Sequence[T], block: int = 1) -> List[T]:
    """This process's contiguous share of ``items`` (all of them for a single process)."""
    return [items[i] for i in shard_range(len(items), block=block)]


def shard_dataset(dataset: Dataset, block: int = 1) -> Dataset:
    """This process's share of ``dataset`` in whole blocks (the dataset itself for a single process)."""
    if not is_distributed():
        return dataset
    return Subset(dataset, list(shard_range(len(dataset), block=block)))


def gather_in_order(local: Iterable[T], dst: Optional[int] = 0) -> Optional[List[T]]:
    """Concatenate every process's results in rank order: the inverse of :func:`shard_items`.

    On ``dst`` (every process when ``dst`` is None) the list of all results; ``None`` elsewhere.
    """
    local = list(local)
    parts = all_gather_objects(local) if dst is None else gather_objects(local, dst=dst)
    if parts is None:
        return None
    return [item for part in parts for item in part]


def merged_order(local_names: Iterable[str]) -> List[str]:
    """Names in order of first appearance across the rank-ordered shards, on every process."""
    return list(dict.fromkeys(name for part in all_gather_objects(list(local_names)) for name in part))


# ---- tensors ------------------------------------------------------------------------------------
def broadcast_parameters(parameters: Iterable[torch.Tensor], src: int = 0) -> None:
    """Copy process ``src``'s values into ``parameters`` on every process (they start identical)."""
    if not is_distributed():
        return
    device = _communication_device()
    with torch.no_grad():
        for parameter in parameters:
            value = parameter.detach().to(device)
            dist.broadcast(value, src=src)
            parameter.copy_(value.to(parameter.device))


def _flat_gradients(parameters: Sequence[torch.Tensor], device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    grads = [p.grad.detach().reshape(-1).to(device, torch.float32) if p.grad is not None
             else torch.zeros(p.numel(), device=device) for p in parameters]
    present = torch.tensor([float(p.grad is not None) for p in parameters], device=device)
    return torch.cat(grads) if grads else torch.zeros(0, device=device), present


def _set_gradients(parameters: Sequence[torch.Tensor], flat: torch.Tensor, present: torch.Tensor) -> None:
    offset = 0
    for parameter, has_grad in zip(parameters, present.tolist()):
        values = flat[offset:offset + parameter.numel()]
        offset += parameter.numel()
        parameter.grad = values.view_as(parameter).to(parameter.device, parameter.dtype) if has_grad else None


def average_gradients(parameters: Sequence[torch.Tensor], count: int, loss: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Turn per-process gradients of slice-mean losses into those of the whole global batch's mean.

    Each process computed ``loss`` (and its gradients) as a mean over its ``count`` samples; one
    all-reduce sums ``count * (gradient, loss)`` over processes and divides by the total count.
    A parameter keeps no gradient when no process gave it one (as an optimiser step on a single
    process would see it). Returns the global mean loss and the global sample count.
    """
    if not is_distributed():
        return loss, count
    device = _communication_device()
    flat, present = _flat_gradients(parameters, device)
    weight = float(count)
    buffer = torch.cat([flat * weight, present, torch.tensor([float(loss) * weight, weight], device=device)])
    dist.all_reduce(buffer)
    total = int(round(float(buffer[-1])))
    if total == 0:
        raise ValueError("no process had a sample in this global batch")
    size = flat.numel()
    _set_gradients(parameters, buffer[:size] / total, buffer[size:size + len(parameters)])
    return torch.tensor(float(buffer[-2]) / total), total


def broadcast_gradients(parameters: Sequence[torch.Tensor], src: int = 0) -> None:
    """Process ``src``'s gradients on every process: processes that computed the same batch then
    step identically even where a GPU kernel (e.g. an atomic-add backward) is not bitwise repeatable."""
    if not is_distributed():
        return
    device = _communication_device()
    flat, present = _flat_gradients(parameters, device)
    buffer = torch.cat([flat, present])
    dist.broadcast(buffer, src=src)
    _set_gradients(parameters, buffer[:flat.numel()], buffer[flat.numel():])
