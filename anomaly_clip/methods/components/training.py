"""Training small parts on top of frozen image features, which are computed once and replayed.

AnomalyCLIP, CoOp and APRIL-GAN train only text prompts or linear projections: the image tower
is frozen, so (without augmentation) it sees the same images every epoch and its outputs can be
computed in the first epoch and replayed afterwards (:mod:`anomaly_clip.engine.feature_cache`).
:func:`train_on_frozen_features` runs that recipe on :func:`~anomaly_clip.engine.training.fit_stage`
with the official optimiser of all three methods (Adam, betas 0.5 / 0.999).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from ...data.dataset import AnomalyDataset
from ...data.pseudo_anomaly import apply_pseudo_anomalies, require_anomalies
from ...engine.config import TrainConfig
from ...engine.detector import AnomalyDetector
from ...engine.distributed import get_world_size
from ...engine.feature_cache import EpochLoader, FeatureCache, choose_cache_mode
from ...engine.training import (StageResult, TrainData, TrainingData, TrainResult, checkpoint_path, fit_stage,
                                initialise, seed_everything, training_data)
from .config import FrozenFeatureTraining
from .glocal import GlocalDetector

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.999)
SEG_LOSS_ADVICE = "train the global loss alone with --seg_loss_weight 0"
_SAMPLE_KEYS = ("mask", "label", "class_id", "index")

Encoder = Callable[[torch.Tensor], Dict[str, torch.Tensor]]
"""images (B, 3, S, S) -> named frozen feature tensors with the batch first."""
LossFunction = Callable[[Dict[str, torch.Tensor], torch.Tensor, torch.Tensor, Sequence[str]], Dict[str, torch.Tensor]]
"""(features, labels (B,), binary masks (B, 1, S, S), class names) -> named losses, "loss" the total."""


class ClassVocabulary:
    """Class names <-> small integer ids, assigned as names appear (ids are cached with features)."""

    def __init__(self) -> None:
        self.names: List[str] = []
        self.ids: Dict[str, int] = {}

    def encode(self, names: Iterable[str], device: torch.device) -> torch.Tensor:
        names = list(names)
        for name in names:
            if name not in self.ids:
                self.ids[name] = len(self.names)
                self.names.append(name)
        return torch.tensor([self.ids[name] for name in names], dtype=torch.long, device=device)

    def decode(self, ids: torch.Tensor) -> List[str]:
        return [self.names[i] for i in ids.tolist()]


def train_on_frozen_features(detector: AnomalyDetector, dataset: Dataset, config: TrainConfig,
                             parameters: Iterable[torch.nn.Parameter], encode: Encoder, loss: LossFunction,
                             feature_bytes: int, epochs: int, learning_rate: float, batch_size: int,
                             feature_cache: str = "auto", masks_advice: Optional[str] = None,
                             check: Optional[Callable[[Dataset], None]] = None) -> StageResult:
    """Train ``parameters`` with Adam (betas 0.5 / 0.999) on ``loss`` of ``encode``'s frozen features,
    for ``epochs`` epochs of ``batch_size`` samples, with the run settings of ``config`` (seed,
    output folder, precision, workers, resume, checkpoint frequency).

    With ``feature_cache`` other than ``off`` the first epoch stores the features (``feature_bytes``
    per sample decides where: device, host or disk) and later epochs replay them; the per-epoch
    sample order is the same either way, so the result equals recomputing the features every
    epoch (to float rounding: a matmul may round differently when an image shares its batch with
    other images). Data that changes every epoch (augmentation, pseudo-anomalies, mosaics) is never
    cached.

    Data without anomalous images is refused; with ``masks_advice`` (what to do instead, the loss
    segments), so is data without masks; ``check(dataset)`` then raises on anything else the
    method cannot train on. All raise ``ValueError``.
    """
    seed_everything(config.seed)
    require_anomalies(dataset, getattr(dataset, "root", "the training folder"))
    if masks_advice is not None and getattr(dataset, "has_masks", True) is False:
        raise ValueError(f"the training data has no masks (image-level only): {masks_advice}")
    if check is not None:
        check(dataset)
    share = -(-len(dataset) // get_world_size())
    mode = choose_cache_mode(feature_cache, feature_bytes, share, detector.device,
                             varies_by_epoch=getattr(dataset, "varies_by_epoch", False))
    cache = None
    if mode != "off":
        cache = FeatureCache(len(dataset), mode, directory=Path(config.save_path) / "feature_cache",
                             device=detector.device)
        logger.info("Frozen image features are cached (%s) after the first epoch", mode)
    loader = EpochLoader(dataset, batch_size=batch_size, seed=config.seed, num_workers=config.num_workers,
                         cache=cache)
    vocabulary = ClassVocabulary()

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        if "image" not in batch:
            features = {name: value for name, value in batch.items() if name not in _SAMPLE_KEYS}
            masks, labels, class_ids = batch["mask"].float(), batch["label"], batch["class_id"]
        else:
            features = encode(batch["image"])
            masks = (batch["mask"] > 0.5).float()
            labels = batch["label"]
            class_ids = vocabulary.encode(batch["class_name"], labels.device)
            if cache is not None:
                cache.put(batch["index"], {**features, "mask": masks.to(torch.uint8), "label": labels,
                                           "class_id": class_ids})
        return loss(features, labels, masks, vocabulary.decode(class_ids))

    optimizer = torch.optim.Adam(list(parameters), lr=learning_rate, betas=ADAM_BETAS)
    try:
        return fit_stage(detector, loader, optimizer, step, epochs, config)
    finally:
        if cache is not None:
            cache.close()


def glocal_dataset(detector: AnomalyDetector, data: Union[TrainingData, Dataset]) -> Dataset:
    """The training dataset of ``data`` with the method's transforms and pseudo-anomalies (a ready
    dataset is used as it is)."""
    if not isinstance(data, TrainingData):
        return data
    dataset = AnomalyDataset(data.samples, data.root, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation)
    return apply_pseudo_anomalies(dataset, data.pseudo_anomalies)


def train_glocal(detector: GlocalDetector, data: TrainData, config: TrainConfig, settings: FrozenFeatureTraining,
                 check: Optional[Callable[[Dataset], None]] = None) -> TrainResult:
    """AnomalyCLIP's recipe for the ``prompt_learner`` of a :class:`~.glocal.GlocalDetector`
    (AnomalyCLIP, CoOp): the glocal loss on cached frozen image features, Adam betas 0.5 / 0.999,
    ``settings`` for epochs, learning rate, batch size and the feature cache. ``data`` as for
    :func:`anomaly_clip.fit`; data without masks needs ``seg_loss_weight`` 0; ``check(dataset)``
    refuses data the method cannot train on (``ValueError``)."""
    initialise(detector, config)
    dataset = glocal_dataset(detector, training_data(data))
    result = train_on_frozen_features(
        detector, dataset, config, detector.prompt_learner.parameters(), detector.image_features,
        detector.glocal_loss, detector.feature_bytes(), epochs=settings.epoch, learning_rate=settings.learning_rate,
        batch_size=settings.batch_size, feature_cache=settings.feature_cache,
        masks_advice=SEG_LOSS_ADVICE if detector.config.seg_loss_weight else None, check=check)
    return TrainResult({"": result}, checkpoint_path(Path(config.save_path), "", settings.epoch))
