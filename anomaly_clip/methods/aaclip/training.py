"""AA-CLIP training: stage 1 adapts the text tower, stage 2 the image tower against fixed anchors.

Both stages run through :func:`anomaly_clip.engine.training.fit_stage` (mixed precision, atomic
checkpoints, resume, official-format export); each stage resumes on its own, so an interrupted
run continues where it stopped.

Under ``torchrun`` the image stage splits every global batch across the processes. The text
stage cannot: its V-V attention mixes the images of a batch at each token (``vv_axis="batch"``,
the reference) and its disentangle loss squares a batch mean, so each process loads a part of
the global batch, the parts are gathered and every process steps on the whole batch. Augmentation
is then drawn per (seed, epoch, image) so that it does not depend on which process loads an image.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from ...data.augment import AAClipAugmentation
from ...data.dataset import AnomalyDataset
from ...data.fewshot import few_shot_subset
from ...engine.distributed import get_world_size
from ...data.pseudo_anomaly import PseudoAnomalies, apply_pseudo_anomalies, require_anomalies
from ...engine.config import TrainConfig
from ...engine.feature_cache import EpochLoader
from ...engine.training import (StageResult, TrainData, TrainResult, TrainingData, checkpoint_path, fit_stage,
                                initialise, seed_everything, training_data)
from .config import AAClipTraining, ImageStageTraining
from .model import AAClipDetector, AdaptedImageDetector

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.999)


def _masks(batch: Dict[str, Any]) -> torch.Tensor:
    return (batch["mask"] > 0.5).float()


def train_text_stage(detector: AAClipDetector, dataset: Dataset, config: TrainConfig,
                     settings: AAClipTraining) -> StageResult:
    """Stage 1: train the text adapter (Adam, no schedule) on segmentation + disentangle loss."""
    detector.config.adapt_text = True
    detector.text_parts_changed()
    loader = EpochLoader(dataset, batch_size=settings.text_batch_size, seed=config.seed,
                         num_workers=config.num_workers, whole_batches=True)
    if get_world_size() > 1:
        logger.info("Text stage: every process steps on the whole global batch of %d (its V-V attention "
                    "(vv_axis=%s) and disentangle loss couple a batch's images); only data loading is split",
                    settings.text_batch_size, settings.vv_axis)
    optimizer = torch.optim.Adam(detector.text_adapter.parameters(), lr=settings.text_lr, betas=ADAM_BETAS)

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return detector.text_stage_loss(batch["image"], _masks(batch), list(batch["class_name"]),
                                        disentangle_weight=settings.disentangle_weight,
                                        dpam_layers=settings.dpam_layers, vv_axis=settings.vv_axis,
                                        loss_levels=settings.text_loss_levels)

    result = fit_stage(detector, loader, optimizer, step, settings.text_epoch, config, stage="text")
    detector.text_parts_changed()
    return result


def train_image_stage(detector: AdaptedImageDetector, dataset: Dataset, config: TrainConfig,
                      settings: ImageStageTraining) -> StageResult:
    """Stage 2: train the image adapter against the fixed anchors (Adam, MultiStepLR per iteration)."""
    loader = EpochLoader(dataset, batch_size=settings.image_batch_size, seed=config.seed + 1,
                         num_workers=config.num_workers)
    optimizer = torch.optim.Adam(detector.image_adapter.parameters(), lr=settings.image_lr, betas=ADAM_BETAS)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.image_milestones),
                                                     gamma=settings.image_lr_gamma)

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return detector.image_stage_loss(batch["image"], _masks(batch), batch["label"], list(batch["class_name"]))

    return fit_stage(detector, loader, optimizer, step, settings.image_epoch, config, stage="image",
                     scheduler=scheduler)


def train(detector: AAClipDetector, data: TrainData, config: TrainConfig) -> TrainResult:
    """Run both stages with the settings ``config.method`` (:class:`AAClipTraining`, official
    defaults when None) and return the result; its final checkpoint is the last image-stage one.

    ``data``: :class:`~anomaly_clip.engine.training.TrainingData` (augmented and, with ``shot``,
    few-shot datasets are built from it, see :func:`build_training_datasets`), a dataset root,
    or one ready dataset used by both stages. With ``text_epoch == 0`` the text stage is skipped
    and anchors come from plain CLIP, as in the official code.
    """
    settings = config.method or AAClipTraining()
    initialise(detector, config)
    output_dir = Path(config.save_path)
    data = training_data(data)
    if isinstance(data, TrainingData):
        text_dataset, image_dataset = build_training_datasets(
            data.samples, data.root, detector.image_size, settings.shots, config.seed,
            seeded_augmentation=settings.seeded_augmentation, pseudo_anomalies=data.pseudo_anomalies)
    else:
        text_dataset = image_dataset = data
    seed_everything(config.seed)
    stages: Dict[str, StageResult] = {}
    if settings.text_epoch > 0:
        stages["text"] = train_text_stage(detector, text_dataset, config, settings)
        _log_history("text", stages["text"])
    else:
        detector.config.adapt_text = False
        detector.text_parts_changed()
        logger.info("Text stage skipped: anchors use plain CLIP text features")
    stages["image"] = train_image_stage(detector, image_dataset, config, settings)
    _log_history("image", stages["image"])
    last = checkpoint_path(output_dir, "image", settings.image_epoch)
    if not last.is_file():
        raise FileNotFoundError(f"expected the final checkpoint {last} after training")
    return TrainResult(stages, last)


def _log_history(stage: str, result: StageResult) -> None:
    if result.history:
        logger.info("%s stage finished: %s", stage, json.dumps(result.history[-1]))
    else:
        logger.info("%s stage already complete (resumed)", stage)


def build_training_datasets(samples: Sequence[Any], root: str, image_size: int, shot: int, seed: int,
                            seeded_augmentation: bool = False,
                            pseudo_anomalies: Optional[PseudoAnomalies] = None) -> Tuple[Dataset, Dataset]:
    """(text-stage, image-stage) datasets: geometric augmentation for both, colour jitter for
    the image stage only; few-shot subsets of ``shot`` images per class when ``shot > 0``;
    ``pseudo_anomalies`` paints defects on normal images of both.

    Augmentation draws from torch's global generator as the official code does, or, with
    ``seeded_augmentation`` (always under ``torchrun``), from a generator per (seed, epoch, image).
    """
    if get_world_size() > 1 and not seeded_augmentation:
        logger.info("Augmentation is drawn per (seed, epoch, image) under torchrun (as --seeded_augmentation)")
        seeded_augmentation = True
    if shot > 0:
        samples = few_shot_subset(samples, shot, seed=seed)
    if not samples:
        raise ValueError("no training samples")
    mask_interpolation = AAClipDetector.mask_interpolation
    seeds = (seed, seed + 1) if seeded_augmentation else (None, None)
    text_dataset, image_dataset = (
        apply_pseudo_anomalies(AnomalyDataset(samples, root, image_size=image_size,
                                              mask_interpolation=mask_interpolation,
                                              augment=AAClipAugmentation(color_jitter=jitter, seed=stage_seed)),
                               pseudo_anomalies, announce=not jitter)
        for jitter, stage_seed in zip((False, True), seeds))
    require_anomalies(text_dataset, root)
    if not text_dataset.has_masks:
        raise ValueError(f"the training data under {root} has no pixel masks; both AA-CLIP stages need them")
    return text_dataset, image_dataset
