"""The device of this process (imports torch only when called)."""
from __future__ import annotations

import os
from typing import Any, Optional


def launched_by_torchrun() -> bool:
    """True in a process that ``torchrun`` started as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_device(device: Optional[Any] = None) -> Any:
    """The ``torch.device`` for ``device``: ``None``/``"auto"`` mean CUDA when present, CPU
    otherwise; under ``torchrun`` a GPU request means the GPU of ``LOCAL_RANK``.

    Raises ``ValueError`` for a device string torch does not know, a CUDA device on a machine
    without one (or an index beyond the visible GPUs), a torchrun process asking for another GPU
    than its local rank's, or fewer visible GPUs than processes.
    """
    import torch

    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"--device {device} is not a device (use cpu, cuda, cuda:N or auto): {error}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is visible to PyTorch (torch.cuda.is_available() is "
                             "False; check the driver and CUDA_VISIBLE_DEVICES); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) are visible "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if device.type != "cuda" or not launched_by_torchrun():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index is not None and device.index != local_rank:
        raise ValueError(f"under torchrun every process takes the GPU of its local rank; got --device {device} "
                         f"in the process of local rank {local_rank} (give --device cuda or auto)")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                         "start at most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", local_rank)
