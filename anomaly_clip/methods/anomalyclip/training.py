"""AnomalyCLIP training: glocal loss on the prompt learner, frozen image features cached."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Union

import torch
from torch.utils.data import Dataset

from ...data.dataset import AnomalyDataset
from ...data.pseudo_anomaly import apply_pseudo_anomalies, require_anomalies
from ...engine.config import TrainConfig
from ...engine.distributed import get_world_size
from ...engine.feature_cache import EpochLoader, FeatureCache, choose_cache_mode
from ...engine.training import (TrainData, TrainResult, TrainingData, checkpoint_path, fit_stage, initialise,
                                seed_everything, training_data)
from .config import AnomalyCLIPTraining
from .model import AnomalyCLIP

logger = logging.getLogger(__name__)


def _feature_bytes(detector: AnomalyCLIP) -> int:
    grid = detector.backbone.grid_size()
    tokens = 1 + grid[0] * grid[1]
    embed = detector.backbone.embed_dim
    size = detector.image_size
    return 4 * embed * (1 + len(detector.config.features_list) * tokens) + size * size + 16


def train(detector: AnomalyCLIP, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the prompt learner of ``detector`` with the official optimiser (Adam, betas 0.5/0.999)
    and the settings ``config.method`` (:class:`AnomalyCLIPTraining`, official defaults when None).

    ``data``: :class:`~anomaly_clip.engine.training.TrainingData` (its pseudo-anomalies painted on
    normal images), a dataset root, or a ready dataset of AnomalyCLIP items.

    With ``feature_cache`` other than ``off``, the first epoch stores the frozen image features
    and later epochs replay them; the per-epoch sample order is the same either way, so the
    learnt prompts equal those of recomputing the features every epoch (to float rounding: a
    matmul may round differently when an image shares its batch with other images). Data that
    changes every epoch (a :class:`~anomaly_clip.data.pseudo_anomaly.PseudoAnomalyDataset`) is
    never cached.
    """
    settings = config.method or AnomalyCLIPTraining()
    initialise(detector, config)
    dataset = _dataset(detector, training_data(data))
    seed, output_dir = config.seed, Path(config.save_path)
    seed_everything(seed)
    require_anomalies(dataset, getattr(dataset, "root", "the training folder"))
    if detector.config.seg_loss_weight and getattr(dataset, "has_masks", True) is False:
        raise ValueError("the training data has no masks (image-level only): train the global loss alone "
                         "with --seg_loss_weight 0")
    if detector.config.object_classes:
        known = set(detector.prompt_learner.class_names)
        names = {sample.class_name.replace("_", " ") for sample in dataset.samples}
        if not names <= known:
            raise ValueError(f"object-aware prompts lack classes {sorted(names - known)}")
    share = -(-len(dataset) // get_world_size())
    mode = choose_cache_mode(settings.feature_cache, _feature_bytes(detector), share, detector.device,
                             varies_by_epoch=getattr(dataset, "varies_by_epoch", False))
    cache = None
    if mode != "off":
        cache = FeatureCache(len(dataset), mode, directory=Path(output_dir) / "feature_cache", device=detector.device)
        logger.info("Frozen image features are cached (%s) after the first epoch", mode)
    loader = EpochLoader(dataset, batch_size=settings.batch_size, seed=seed, num_workers=config.num_workers, cache=cache)
    class_names = detector.prompt_learner.class_names

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if "global" in batch:
            features = {"global": batch["global"], "patches": batch["patches"]}
            masks, labels, class_ids = batch["mask"].float(), batch["label"], batch["class_id"]
        else:
            features = detector.image_features(batch["image"])
            masks = (batch["mask"] > 0.5).float()
            labels = batch["label"]
            class_ids = detector.prompt_learner.class_index(batch["class_name"], labels.shape[0], labels.device)
            if cache is not None:
                cache.put(batch["index"], {**features, "mask": masks.to(torch.uint8), "label": labels,
                                           "class_id": class_ids})
        names = [class_names[i] for i in class_ids.tolist()] if len(class_names) > 1 else None
        return detector.glocal_loss(features, labels, masks, names)

    optimizer = torch.optim.Adam(detector.prompt_learner.parameters(), lr=settings.learning_rate, betas=(0.5, 0.999))
    try:
        result = fit_stage(detector, loader, optimizer, step, settings.epoch, config)
    finally:
        if cache is not None:
            cache.close()
    return TrainResult({"": result}, checkpoint_path(output_dir, "", settings.epoch))


def _dataset(detector: AnomalyCLIP, data: Union[TrainingData, Dataset]) -> Dataset:
    """AnomalyCLIP's training dataset of ``data`` (the method's transforms, pseudo-anomalies)."""
    if not isinstance(data, TrainingData):
        return data
    dataset = AnomalyDataset(data.samples, data.root, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation)
    return apply_pseudo_anomalies(dataset, data.pseudo_anomalies)
