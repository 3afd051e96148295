"""CoOp training: AnomalyCLIP's recipe (glocal loss, Adam betas 0.5 / 0.999, cached frozen
features) on the context vectors only."""
from __future__ import annotations

from pathlib import Path
from typing import Union

from torch.utils.data import Dataset

from ...data.dataset import AnomalyDataset
from ...data.pseudo_anomaly import apply_pseudo_anomalies
from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainResult, TrainingData, checkpoint_path, initialise, training_data
from ..anomalyclip.config import AnomalyCLIPTraining
from ..anomalyclip.training import SEG_LOSS_ADVICE
from ..components.training import train_on_frozen_features
from .model import CoOpDetector


def train(detector: CoOpDetector, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the context vectors of ``detector`` on the glocal loss with AnomalyCLIP's settings
    (``config.method``: :class:`~anomaly_clip.methods.anomalyclip.config.AnomalyCLIPTraining`,
    official defaults when None); class-aware prompts: each batch's class names pick its text rows.
    ``seg_loss_weight`` 0 trains the global loss alone (data without masks then works too)."""
    settings = config.method or AnomalyCLIPTraining()
    initialise(detector, config)
    dataset = _dataset(detector, training_data(data))
    result = train_on_frozen_features(
        detector, dataset, config, detector.prompt_learner.parameters(), detector.image_features,
        detector.glocal_loss, detector.feature_bytes(), epochs=settings.epoch, learning_rate=settings.learning_rate,
        batch_size=settings.batch_size, feature_cache=settings.feature_cache,
        masks_advice=SEG_LOSS_ADVICE if detector.config.seg_loss_weight else None)
    return TrainResult({"": result}, checkpoint_path(Path(config.save_path), "", settings.epoch))


def _dataset(detector: CoOpDetector, data: Union[TrainingData, Dataset]) -> Dataset:
    if not isinstance(data, TrainingData):
        return data
    dataset = AnomalyDataset(data.samples, data.root, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation)
    return apply_pseudo_anomalies(dataset, data.pseudo_anomalies)
