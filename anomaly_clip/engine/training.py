"""The training loop every method stage runs, in pieces: restore, step, end of epoch, save.

A method's recipe (``methods/<name>/training.py``) builds its data loader, optimiser and a
``step`` function (batch -> named losses, ``"loss"`` being the total to minimise) and calls
:func:`fit_stage` once per stage; :func:`anomaly_clip.fit` runs the recipe of any method with a
:class:`~anomaly_clip.engine.config.TrainConfig`.

Under ``torchrun`` each process steps on its part of every global batch and one all-reduce
turns the parts' gradients into those of the global batch's mean loss (weighted by part size),
so every process takes the same optimiser step as a single process on the global batch would.
Rank 0 alone writes checkpoints, logs and the per-epoch metrics file (``metrics.jsonl``).
"""
from __future__ import annotations

import json
import logging
import os
import random
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..data.formats import load_samples
from ..data.pseudo_anomaly import PseudoAnomalies
from ..data.records import Sample
from ..files import FolderLockedError, folder_lock, read_torch_file
from .checkpoint import atomic_save, checkpoint_payload, initialise_from_checkpoint, setting_differences
from .config import TrainConfig
from .detector import AnomalyDetector
from .distributed import (all_gather_objects, average_gradients, barrier, broadcast_gradients,
                          broadcast_object, broadcast_parameters, is_distributed, is_main_process)
from .precision import autocast, autocast_dtype

logger = logging.getLogger(__name__)

StepFunction = Callable[[Dict[str, Any]], Dict[str, torch.Tensor]]
METRICS_FILE = "metrics.jsonl"


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
class TrainingData:
    """Training samples of a dataset root (any metadata the data package reads), and the
    pseudo-anomalies to paint on its normal images (None: train on the data as it is).

    Each method builds its own datasets from it (transforms, augmentation, few-shot subsets).
    """

    samples: Sequence[Sample]
    root: str
    pseudo_anomalies: Optional[PseudoAnomalies] = None

    @classmethod
    def from_folder(cls, root: str | os.PathLike, split: str = "test", metadata: Optional[str] = None,
                    pseudo_anomalies: Optional[PseudoAnomalies] = None) -> "TrainingData":
        """The ``split`` of the dataset at ``root`` (AnomalyCLIP trains on the auxiliary dataset's
        test split, where the anomalies and masks are)."""
        return cls(load_samples(str(root), split=split, metadata=metadata), str(root), pseudo_anomalies)


TrainData = Union[TrainingData, Dataset, str, os.PathLike]
"""What :func:`anomaly_clip.fit` accepts: :class:`TrainingData`, a dataset root (its test split),
or a ready ``Dataset`` of training items (used as it is by every stage)."""


def initialise(detector: AnomalyDetector, config: TrainConfig) -> None:
    """Load the learnt weights of ``config.init_checkpoint`` (if any) into ``detector``."""
    if config.init_checkpoint:
        initialise_from_checkpoint(detector, config.init_checkpoint)


def training_data(data: TrainData) -> Union[TrainingData, Dataset]:
    """A dataset root becomes :class:`TrainingData` of its test split; anything else is returned."""
    if isinstance(data, (str, os.PathLike)):
        return TrainingData.from_folder(data)
    return data


@dataclass
class StageResult:
    """Per-epoch mean losses of a finished stage and the checkpoint files written."""

    history: List[Dict[str, float]] = field(default_factory=list)
    checkpoints: List[Path] = field(default_factory=list)


@dataclass
class TrainResult:
    """What a training run produced: each stage's result and the checkpoint of the finished model."""

    stages: Dict[str, StageResult]
    final_checkpoint: Path


def resume_path(output_dir: Path, stage: str) -> Path:
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


class StageLoop:
    """One training stage: :meth:`restore` (resume), :meth:`step` (one optimiser step),
    :meth:`end_epoch` (mean losses, log, metrics file) and :meth:`save` (checkpoints), run by
    :meth:`run`. The scheduler, if any, steps once per iteration."""

    def __init__(self, detector: AnomalyDetector, loader: Iterable[Dict[str, Any]], optimizer: torch.optim.Optimizer,
                 step: StepFunction, epochs: int, config: TrainConfig, stage: str = "",
                 scheduler: Optional[Any] = None):
        self.detector, self.loader, self.optimizer, self.step_function = detector, loader, optimizer, step
        self.epochs, self.config, self.stage, self.scheduler = epochs, config, stage, scheduler
        self.label = stage or "train"
        self.output_dir = Path(config.save_path)
        self.distributed = is_distributed()
        self.whole_batches = getattr(loader, "whole_batches", None)
        if self.distributed and self.whole_batches is None:
            raise TypeError("training under torchrun needs an EpochLoader, which splits every global batch "
                            "across the processes")
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        names = getattr(getattr(loader, "dataset", None), "class_names", None)
        self.class_names = [str(n) for n in names] if isinstance(names, (list, tuple)) else []
        self.device = detector.device
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=autocast_dtype(self.device, config.precision) == torch.float16)

    def restore(self) -> int:
        """The epoch to start from: that of the stage's resume file with ``resume``, else 0.

        The file is read weights-only and must come from a run of the same method, stage and
        architecture (:func:`check_resumable`). The checkpoint and official files of the resumed
        epoch are written again if a kill removed them (:func:`save_epoch` writes the resume
        file last, so they exist unless an earlier version wrote them in another order).
        """
        start_epoch = 0
        resume_file = resume_path(self.output_dir, self.stage)
        if self.config.resume and resume_file.is_file():
            state = read_resume_state(resume_file)
            check_resumable(state, self.detector, self.stage, resume_file)
            try:
                self.detector.load_trainable_state_dict(state["state_dict"])
                self.optimizer.load_state_dict(state["optimizer"])
                if self.scheduler is not None and state.get("scheduler") is not None:
                    self.scheduler.load_state_dict(state["scheduler"])
                set_rng_state(state["rng"])
                start_epoch = int(state["epoch"])
            except (KeyError, TypeError, ValueError, RuntimeError) as error:
                raise ValueError(f"cannot resume from {resume_file}: {' '.join(str(error).split())}; delete it to "
                                 "start over (the epoch checkpoints beside it are kept)") from None
            if start_epoch > self.epochs:
                raise ValueError(f"cannot resume from {resume_file}: it is at epoch {start_epoch}, past the "
                                 f"{self.epochs} epochs of this run's {self.label} stage; ask for {start_epoch} or "
                                 "more epochs, or train into another --save_path")
            logger.info("Resumed stage %r from %s at epoch %d", self.label, resume_file, start_epoch)
            if start_epoch == self.epochs:
                logger.info("Stage %r had already finished its %d epochs: nothing left to train (more epochs "
                            "continue it)", self.label, self.epochs)
            if is_main_process():
                complete_epoch_files(state, self.detector, self.output_dir, self.stage, start_epoch,
                                     self.config.export_official)
            barrier()
        elif self.config.resume:
            logger.info("No checkpoint to resume at %s; starting from scratch", resume_file)
        broadcast_parameters(self.parameters)
        return start_epoch

    def step(self, batch: Dict[str, Any], epoch: int) -> tuple:
        """One optimiser step on ``batch``: (losses, global mean loss, this process's share of it)."""
        config, device = self.config, self.device
        batch = move_batch(batch, device)
        count = batch_length(batch)
        self.optimizer.zero_grad(set_to_none=True)
        losses: Dict[str, torch.Tensor] = {}
        total = torch.zeros((), device=device)
        if count:
            with autocast(device, config.precision):
                losses = self.step_function(batch)
            total = losses["loss"].detach()
            self.scaler.scale(losses["loss"]).backward()
        else:
            self.scaler.scale(total)  # a process with an empty part still needs the scaler set up to step
        share = 1.0
        if self.distributed and self.whole_batches:
            broadcast_gradients(self.parameters)
        elif self.distributed:
            total, global_count = average_gradients(self.parameters, count, total)
            share = count / global_count
        if not torch.isfinite(total):
            raise FloatingPointError(f"{self.label}: loss became {total.item()} at epoch {epoch + 1}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        return losses, total, share

    def end_epoch(self, epoch: int, sums: Dict[str, float], batches: int) -> Dict[str, float]:
        """Mean losses of the epoch (over every process), logged and appended to the metrics file."""
        if batches == 0:
            raise ValueError(f"{self.label}: the training loader yielded no batch")
        if self.distributed and not self.whole_batches:
            sums = _sum_over_processes(sums)
        means = {name: value / batches for name, value in sums.items()}
        means["epoch"] = epoch + 1
        if (epoch + 1) % self.config.print_freq == 0:
            parts = ", ".join(f"{name}:{value:.4f}" for name, value in means.items() if name != "epoch")
            logger.info("%s epoch [%d/%d], %s", self.label, epoch + 1, self.epochs, parts)
        if is_main_process():
            with (self.output_dir / METRICS_FILE).open("a") as handle:
                handle.write(json.dumps({"stage": self.label, **means}) + "\n")
        return means

    def save(self, epoch: int) -> Path:
        """Checkpoint the finished ``epoch`` (rank 0 writes; every process waits for it)."""
        path = checkpoint_path(self.output_dir, self.stage, epoch + 1)
        if is_main_process():
            save_epoch(self.detector, self.optimizer, self.scheduler, self.output_dir, self.stage, epoch + 1,
                       self.config.export_official, self.config.run_settings, self.class_names)
        barrier()
        return path

    def run(self) -> StageResult:
        """Train from :meth:`restore`'s epoch to ``epochs``, checkpointing every ``save_freq``."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        result = StageResult()
        for epoch in range(self.restore(), self.epochs):
            self.detector.train()
            if hasattr(self.loader, "set_epoch"):
                self.loader.set_epoch(epoch)
            sums: Dict[str, float] = {}
            batches = 0
            progress = tqdm(self.loader, desc=f"{self.label} epoch {epoch + 1}/{self.epochs}", leave=False,
                            dynamic_ncols=True, disable=not is_main_process())
            for batch in progress:
                losses, total, share = self.step(batch, epoch)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + share * float(value.detach())
                batches += 1
                progress.set_postfix(loss=f"{float(total):.4f}")
            result.history.append(self.end_epoch(epoch, sums, batches))
            if (epoch + 1) % self.config.save_freq == 0 or epoch + 1 == self.epochs:
                result.checkpoints.append(self.save(epoch))
        return result


def fit_stage(detector: AnomalyDetector, loader: Iterable[Dict[str, Any]], optimizer: torch.optim.Optimizer,
              step: StepFunction, epochs: int, config: TrainConfig, stage: str = "",
              scheduler: Optional[Any] = None) -> StageResult:
    """Train one stage for ``epochs`` epochs (see :class:`StageLoop`)."""
    return StageLoop(detector, loader, optimizer, step, epochs, config, stage, scheduler).run()


def _sum_over_processes(sums: Dict[str, float]) -> Dict[str, float]:
    """Per-name sums of every process's (share-weighted) losses: the global batches' mean losses."""
    total: Dict[str, float] = {}
    for part in all_gather_objects(sums):
        for name, value in part.items():
            total[name] = total.get(name, 0.0) + value
    return total


RESUME_ONLY_KEYS = ("optimizer", "scheduler", "rng")


def rng_state() -> Dict[str, Any]:
    """The random states of torch (CPU), NumPy and Python as plain data (tensors, numbers,
    tuples), so a resume file loads weights-only."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = {"bit_generator": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state` (or the NumPy tuple written by earlier versions)."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["bit_generator"], numpy_state["keys"].numpy().astype(np.uint32),
                       numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))


def _legacy_numpy_types() -> List[Any]:
    """What resume files of earlier versions need beyond plain data: NumPy's RNG key array."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_resume_state(path: str | os.PathLike) -> Dict[str, Any]:
    """A stage's resume file, read weights-only (plain data and tensors; NumPy arrays of
    files written by earlier versions): a planted pickle runs nothing, a truncated file is an
    error naming it."""
    state = read_torch_file(path, "resume file", allowed=_legacy_numpy_types())
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{path} is not a resume file of anomaly_clip (no 'state_dict' entry); delete it to start over")
    return state


def check_resumable(state: Dict[str, Any], detector: AnomalyDetector, stage: str, path: str | os.PathLike) -> None:
    """A resume file of another method, stage or architecture (method config, backbone model,
    size, activation) than ``detector`` is a :class:`ValueError` naming the file and every difference."""
    differences = []
    if state.get("method", detector.method_name) != detector.method_name:
        differences.append(f"method {state['method']} (this run: {detector.method_name})")
    if state.get("stage", stage) != stage:
        differences.append(f"stage {state['stage']!r} (this run: {stage!r})")
    if not differences:
        try:
            differences = setting_differences(state, detector)
        except (TypeError, ValueError) as error:
            raise ValueError(f"cannot resume from {path}: its method settings do not load ({error})") from None
    if differences:
        raise ValueError(f"cannot resume from {path}: it was trained with {'; '.join(differences)}; resume with the "
                         "same settings, or train into another --save_path")


def complete_epoch_files(state: Dict[str, Any], detector: AnomalyDetector, output_dir: Path, stage: str, epoch: int,
                         export_official: bool) -> None:
    """Write the resumed epoch's checkpoint again if it is missing, and its official files (from
    the weights just restored), so every artefact of the epoch exists after a resume."""
    path = checkpoint_path(output_dir, stage, epoch)
    if not path.is_file():
        atomic_save({key: value for key, value in state.items() if key not in RESUME_ONLY_KEYS}, path)
        logger.warning("Wrote the missing checkpoint %s again from %s", path, resume_path(output_dir, stage))
    if export_official:
        for name, official in detector.official_checkpoints(epoch=epoch, stage=stage).items():
            if not (output_dir / name).is_file():
                logger.warning("Wrote the missing official file %s again", output_dir / name)
            atomic_save(official, output_dir / name)


def save_epoch(detector: AnomalyDetector, optimizer: torch.optim.Optimizer, scheduler: Optional[Any],
               output_dir: Path, stage: str, epoch: int, export_official: bool,
               run_settings: Optional[Dict[str, Any]], class_names: Sequence[str] = ()) -> Path:
    """Write the epoch's checkpoint (with the training classes, when known), on request the
    official files, and last the stage's resume file: a run killed in between resumes from the
    previous epoch and writes them all again."""
    extra = {"class_names": list(class_names)} if class_names else {}
    payload = checkpoint_payload(detector, epoch=epoch, stage=stage, run_settings=run_settings or {}, **extra)
    path = atomic_save(payload, checkpoint_path(output_dir, stage, epoch))
    if export_official:
        for name, official in detector.official_checkpoints(epoch=epoch, stage=stage).items():
            atomic_save(official, output_dir / name)
    resume_state = dict(payload)
    resume_state.update(
        optimizer=optimizer.state_dict(),
        scheduler=scheduler.state_dict() if scheduler is not None else None,
        rng=rng_state(),
    )
    atomic_save(resume_state, resume_path(output_dir, stage))
    logger.info("Saved %s", path)
    return path


@contextmanager
def training_lock(save_path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of a training folder (:func:`anomaly_clip.files.folder_lock`) for a whole
    run: a second run into the same ``save_path`` stops with one error instead of mixing its
    checkpoints with the first's. Under ``torchrun`` rank 0 takes it and every process learns
    the outcome."""
    with ExitStack() as stack:
        problem = None
        if is_main_process():
            try:
                stack.enter_context(folder_lock(save_path, "a training run"))
            except FolderLockedError as error:
                problem = str(error)
        problem = broadcast_object(problem)
        if problem:
            raise FolderLockedError(problem)
        yield
