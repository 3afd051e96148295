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

    Raises ``ValueError`` when a torchrun process asks for another GPU than its local rank's,
    or when there are fewer visible GPUs than processes.
    """
    import torch

    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
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
