"""APRIL-GAN training: the linear layers on focal + Dice, frozen tokens cached when the data allows."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from torch.utils.data import Dataset

from ...data.dataset import AnomalyDataset
from ...data.mosaic import MosaicDataset
from ...data.pseudo_anomaly import PseudoAnomalies, apply_pseudo_anomalies
from ...data.records import Sample
from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainResult, TrainingData, checkpoint_path, initialise, training_data
from ..components.training import train_on_frozen_features
from .config import TRAINING, VANDTraining
from .model import VANDDetector

logger = logging.getLogger(__name__)


def build_training_dataset(samples: Sequence[Sample], root: str | Path, image_size: int,
                           aug_rate: float = TRAINING.aug_rate, seed: int = 0,
                           pseudo_anomalies: Optional[PseudoAnomalies] = None) -> Dataset:
    """The official training data: images resized to ``image_size``, masks resized bilinearly and
    binarised, and with ``aug_rate`` > 0 the mosaic augmentation (:mod:`anomaly_clip.data.mosaic`,
    draws seeded by ``seed``). Mosaics and pseudo-anomalies together are refused (``ValueError``)."""
    dataset = AnomalyDataset(samples, root, image_size=image_size, mask_interpolation=VANDDetector.mask_interpolation)
    if aug_rate > 0 and pseudo_anomalies is not None:
        raise ValueError("mosaics (--aug_rate) and pseudo-anomalies (--synthesize_anomalies) do not combine: "
                         "use one of them (--aug_rate 0 for pseudo-anomalies)")
    if aug_rate > 0:
        return MosaicDataset(dataset, aug_rate, seed)
    return apply_pseudo_anomalies(dataset, pseudo_anomalies)


def _dataset(detector: VANDDetector, data: Union[TrainingData, Dataset], settings: VANDTraining,
             seed: int) -> Dataset:
    if not isinstance(data, TrainingData):
        return data
    return build_training_dataset(data.samples, data.root, detector.image_size, settings.aug_rate, seed,
                                  data.pseudo_anomalies)


def train(detector: VANDDetector, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the linear layers of ``detector`` as the official ``train.py`` does (Adam, betas
    0.5 / 0.999, focal + Dice per block, text features fixed) with ``config.method``
    (:class:`VANDTraining`, official MVTec AD defaults when None); only the linear layers change.
    ``data`` as for :func:`anomaly_clip.fit` (a :class:`TrainingData` gets the mosaics of
    ``aug_rate``). Without mosaics the frozen tokens of the first epoch are replayed afterwards
    (``feature_cache``)."""
    settings = config.method or VANDTraining()
    initialise(detector, config)
    dataset = _dataset(detector, training_data(data), settings, config.seed)
    result = train_on_frozen_features(
        detector, dataset, config, detector.linear_layers.parameters(), detector.training_features,
        detector.segmentation_loss, detector.feature_bytes(), epochs=settings.epoch,
        learning_rate=settings.learning_rate, batch_size=settings.batch_size, feature_cache=settings.feature_cache,
        masks_advice="APRIL-GAN trains on masks (focal + Dice); give a dataset with masks or paint defects "
                     "with --synthesize_anomalies P and --aug_rate 0")
    return TrainResult({"": result}, checkpoint_path(Path(config.save_path), "", settings.epoch))
