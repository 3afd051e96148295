"""AnomalyCLIP training: glocal loss on the prompt learner, frozen image features cached."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

from torch.utils.data import Dataset

from ...data.dataset import AnomalyDataset
from ...data.pseudo_anomaly import apply_pseudo_anomalies
from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainResult, TrainingData, checkpoint_path, initialise, training_data
from ..components.training import train_on_frozen_features
from .config import AnomalyCLIPTraining
from .model import AnomalyCLIP

logger = logging.getLogger(__name__)

SEG_LOSS_ADVICE = "train the global loss alone with --seg_loss_weight 0"


def train(detector: AnomalyCLIP, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the prompt learner of ``detector`` with the official optimiser (Adam, betas 0.5/0.999)
    and the settings ``config.method`` (:class:`AnomalyCLIPTraining`, official defaults when None).

    ``data``: :class:`~anomaly_clip.engine.training.TrainingData` (its pseudo-anomalies painted on
    normal images), a dataset root, or a ready dataset of AnomalyCLIP items. The frozen image
    features of the first epoch are replayed afterwards unless ``feature_cache`` is ``off``
    (:func:`~anomaly_clip.methods.components.training.train_on_frozen_features`).
    """
    settings = config.method or AnomalyCLIPTraining()
    initialise(detector, config)
    dataset = _dataset(detector, training_data(data))

    def check_classes(dataset: Dataset) -> None:
        known = set(detector.prompt_learner.class_names)
        names = {sample.class_name.replace("_", " ") for sample in dataset.samples}
        if not names <= known:
            raise ValueError(f"object-aware prompts lack classes {sorted(names - known)}")

    result = train_on_frozen_features(
        detector, dataset, config, detector.prompt_learner.parameters(), detector.image_features,
        detector.glocal_loss, detector.feature_bytes(), epochs=settings.epoch, learning_rate=settings.learning_rate,
        batch_size=settings.batch_size, feature_cache=settings.feature_cache,
        masks_advice=SEG_LOSS_ADVICE if detector.config.seg_loss_weight else None,
        check=check_classes if detector.config.object_classes else None)
    return TrainResult({"": result}, checkpoint_path(Path(config.save_path), "", settings.epoch))


def _dataset(detector: AnomalyCLIP, data: Union[TrainingData, Dataset]) -> Dataset:
    """AnomalyCLIP's training dataset of ``data`` (the method's transforms, pseudo-anomalies)."""
    if not isinstance(data, TrainingData):
        return data
    dataset = AnomalyDataset(data.samples, data.root, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation)
    return apply_pseudo_anomalies(dataset, data.pseudo_anomalies)
