"""The training loop every method stage runs: epochs, mixed precision, logs, checkpoints, resume.

A method supplies a ``step`` function (batch -> named losses, ``"loss"`` being the total to
minimise) and its optimiser; :func:`fit_stage` does the rest identically for all methods.

Under ``torchrun`` each process steps on its part of every global batch and one all-reduce
turns the parts' gradients into those of the global batch's mean loss (weighted by part size),
so every process takes the same optimiser step as a single process on the global batch would.
Rank 0 alone writes checkpoints and logs.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import atomic_save, checkpoint_payload
from .detector import AnomalyDetector
from .distributed import (all_gather_objects, average_gradients, barrier, broadcast_gradients,
                          broadcast_parameters, is_distributed, is_main_process)
from .precision import autocast, autocast_dtype

logger = logging.getLogger(__name__)

StepFunction = Callable[[Dict[str, Any]], Dict[str, torch.Tensor]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def move_batch(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def batch_length(batch: Dict[str, Any]) -> int:
    """Number of samples in a collated batch (its ``index`` entry, else its first tensor)."""
    if "index" in batch:
        return len(batch["index"])
    return next(len(value) for value in batch.values() if torch.is_tensor(value))


@dataclass
class StageResult:
    """Per-epoch mean losses of a finished stage and the checkpoint files written."""

    history: List[Dict[str, float]] = field(default_factory=list)
    checkpoints: List[Path] = field(default_factory=list)


def _resume_path(output_dir: Path, stage: str) -> Path:
    return output_dir / f"{stage + '_' if stage else ''}last.pth"


def checkpoint_path(output_dir: Path, stage: str, epoch: int) -> Path:
    return output_dir / f"{stage + '_' if stage else ''}epoch_{epoch}.pth"


def final_checkpoint(output_dir: str | os.PathLike, stage: str = "") -> Optional[Path]:
    """The highest-epoch checkpoint of ``stage`` in a training folder, or None."""
    prefix = f"{stage + '_' if stage else ''}epoch_"
    epochs = {}
    for path in Path(output_dir).glob(f"{prefix}*.pth"):
        number = path.stem[len(prefix):]
        if number.isdigit():
            epochs[int(number)] = path
    return epochs[max(epochs)] if epochs else None


def fit_stage(
    detector: AnomalyDetector,
    loader: Iterable[Dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    step: StepFunction,
    epochs: int,
    output_dir: str | os.PathLike,
    stage: str = "",
    scheduler: Optional[Any] = None,
    save_freq: int = 1,
    print_freq: int = 1,
    resume: bool = False,
    precision: str = "auto",
    export_official: bool = False,
    run_settings: Optional[Dict[str, Any]] = None,
) -> StageResult:
    """Train for ``epochs`` epochs, logging mean losses and checkpointing every ``save_freq``.

    Each checkpoint is written atomically in our format (with optimiser state for ``resume``);
    ``export_official`` also writes the reference code's files beside it. The scheduler, if
    any, steps once per iteration.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    distributed = is_distributed()
    whole_batches = getattr(loader, "whole_batches", None)
    if distributed and whole_batches is None:
        raise TypeError("training under torchrun needs an EpochLoader, which splits every global batch "
                        "across the processes")
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    device = detector.device
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(device, precision) == torch.float16)
    start_epoch = 0
    resume_file = _resume_path(output_dir, stage)
    if resume and resume_file.is_file():
        state = torch.load(resume_file, map_location="cpu", weights_only=False)
        detector.load_trainable_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        start_epoch = int(state["epoch"])
        logger.info("Resumed stage %r from %s at epoch %d", stage or "train", resume_file, start_epoch)
    elif resume:
        logger.info("No checkpoint to resume at %s; starting from scratch", resume_file)
    broadcast_parameters(parameters)

    result = StageResult()
    label = stage or "train"
    for epoch in range(start_epoch, epochs):
        detector.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        sums: Dict[str, float] = {}
        batches = 0
        progress = tqdm(loader, desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False, dynamic_ncols=True,
                        disable=not is_main_process())
        for batch in progress:
            batch = move_batch(batch, device)
            count = batch_length(batch)
            optimizer.zero_grad(set_to_none=True)
            losses: Dict[str, torch.Tensor] = {}
            total = torch.zeros((), device=device)
            if count:
                with autocast(device, precision):
                    losses = step(batch)
                total = losses["loss"].detach()
                scaler.scale(losses["loss"]).backward()
            else:
                scaler.scale(total)  # a process with an empty part still needs the scaler set up to step
            share = 1.0
            if distributed and whole_batches:
                broadcast_gradients(parameters)
            elif distributed:
                total, global_count = average_gradients(parameters, count, total)
                share = count / global_count
            if not torch.isfinite(total):
                raise FloatingPointError(f"{label}: loss became {total.item()} at epoch {epoch + 1}")
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + share * float(value.detach())
            batches += 1
            progress.set_postfix(loss=f"{float(total):.4f}")
        if batches == 0:
            raise ValueError(f"{label}: the training loader yielded no batch")
        if distributed and not whole_batches:
            sums = _sum_over_processes(sums)
        means = {name: value / batches for name, value in sums.items()}
        means["epoch"] = epoch + 1
        result.history.append(means)
        if (epoch + 1) % print_freq == 0:
            parts = ", ".join(f"{name}:{value:.4f}" for name, value in means.items() if name != "epoch")
            logger.info("%s epoch [%d/%d], %s", label, epoch + 1, epochs, parts)
        if (epoch + 1) % save_freq == 0 or epoch + 1 == epochs:
            path = checkpoint_path(output_dir, stage, epoch + 1)
            if is_main_process():
                _save_epoch(detector, optimizer, scheduler, output_dir, stage, epoch + 1, export_official,
                            run_settings)
            barrier()
            result.checkpoints.append(path)
    return result


def _sum_over_processes(sums: Dict[str, float]) -> Dict[str, float]:
    """Per-name sums of every process's (share-weighted) losses: the global batches' mean losses."""
    total: Dict[str, float] = {}
    for part in all_gather_objects(sums):
        for name, value in part.items():
            total[name] = total.get(name, 0.0) + value
    return total


def _save_epoch(detector: AnomalyDetector, optimizer: torch.optim.Optimizer, scheduler: Optional[Any],
                output_dir: Path, stage: str, epoch: int, export_official: bool,
                run_settings: Optional[Dict[str, Any]]) -> Path:
    payload = checkpoint_payload(detector, epoch=epoch, stage=stage, run_settings=run_settings or {})
    path = atomic_save(payload, checkpoint_path(output_dir, stage, epoch))
    resume_state = dict(payload)
    resume_state.update(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        rng={"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
    )
    atomic_save(resume_state, _resume_path(output_dir, stage))
    if export_official:
        for name, official in detector.official_checkpoints(epoch=epoch, stage=stage).items():
            atomic_save(official, output_dir / name)
    logger.info("Saved %s", path)
    return path
