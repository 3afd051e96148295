"""Training of the hybrid method: AnomalyCLIP prompts (trained here with AnomalyCLIP's recipe, or
taken from a trained AnomalyCLIP checkpoint), then AA-CLIP's image stage against them."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ...engine.checkpoint import initialise_from_checkpoint, load
from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainingData, TrainResult, checkpoint_path, training_data
from ..aaclip.training import build_training_datasets, train_image_stage
from ..anomalyclip.config import AnomalyCLIPTraining
from ..anomalyclip.model import AnomalyCLIP
from ..anomalyclip.training import train as train_prompts
from .config import PromptAdapterTraining
from .model import PromptAdapterDetector

logger = logging.getLogger(__name__)


def train(detector: PromptAdapterDetector, data: TrainData, config: TrainConfig) -> TrainResult:
    """Stage 1: the prompts of ``settings.prompt_checkpoint``, else AnomalyCLIP's recipe in
    ``save_path/prompts``; stage 2: AA-CLIP's image stage (settings ``config.method``, a
    :class:`PromptAdapterTraining`). ``data`` as for :func:`anomaly_clip.fit`."""
    settings = config.method or PromptAdapterTraining()
    data = training_data(data)
    stages = {}
    if settings.prompt_checkpoint:
        prompts = load(settings.prompt_checkpoint, backbone=detector.backbone)
        if not isinstance(prompts, AnomalyCLIP):
            raise ValueError(f"--prompt_checkpoint {settings.prompt_checkpoint} is a {prompts.method_name} "
                             "checkpoint, not an AnomalyCLIP one")
        logger.info("Prompts taken from %s", settings.prompt_checkpoint)
    else:
        prompts = AnomalyCLIP(detector.backbone, detector.prompt_config())
        prompt_training = AnomalyCLIPTraining(epoch=settings.prompt_epoch, learning_rate=settings.prompt_lr,
                                              batch_size=settings.prompt_batch_size)
        stages["prompts"] = train_prompts(prompts, data, replace(
            config, save_path=str(Path(config.save_path) / "prompts"), method=prompt_training,
            run_settings={})).stages[""]
    detector.load_prompts(prompts, adopt_settings=bool(settings.prompt_checkpoint))
    if config.init_checkpoint:
        initialise_from_checkpoint(detector, config.init_checkpoint)
    if isinstance(data, TrainingData):
        _, image_dataset = build_training_datasets(data.samples, data.root, detector.image_size, settings.shots,
                                                   config.seed, seeded_augmentation=settings.seeded_augmentation,
                                                   pseudo_anomalies=data.pseudo_anomalies)
    else:
        image_dataset = data
    stages["image"] = train_image_stage(detector, image_dataset, config, settings)
    last = checkpoint_path(Path(config.save_path), "image", settings.image_epoch)
    if not last.is_file():
        raise FileNotFoundError(f"expected the final checkpoint {last} after training")
    return TrainResult(stages, last)
