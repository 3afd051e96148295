"""AnomalyCLIP training: glocal loss on the prompt learner, frozen image features cached."""
from __future__ import annotations

from torch.utils.data import Dataset

from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainResult
from ..components.training import train_glocal
from .config import AnomalyCLIPTraining
from .model import AnomalyCLIP


def train(detector: AnomalyCLIP, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the prompt learner of ``detector`` with the official optimiser (Adam, betas 0.5/0.999)
    and the settings ``config.method`` (:class:`AnomalyCLIPTraining`, official defaults when None).

    ``data``: :class:`~anomaly_clip.engine.training.TrainingData` (its pseudo-anomalies painted on
    normal images), a dataset root, or a ready dataset of AnomalyCLIP items. The frozen image
    features of the first epoch are replayed afterwards unless ``feature_cache`` is ``off``
    (:func:`~anomaly_clip.methods.components.training.train_glocal`). Object-aware prompts refuse
    classes they have no prompts for.
    """

    def check_classes(dataset: Dataset) -> None:
        known = set(detector.prompt_learner.class_names)
        names = {sample.class_name.replace("_", " ") for sample in dataset.samples}
        if not names <= known:
            raise ValueError(f"object-aware prompts lack classes {sorted(names - known)}")

    return train_glocal(detector, data, config, config.method or AnomalyCLIPTraining(),
                        check=check_classes if detector.config.object_classes else None)
