"""AnomalyCLIP training: glocal loss on the prompt learner, frozen image features cached."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch.utils.data import Dataset

from ...engine.distributed import get_world_size
from ...data.pseudo_anomaly import require_anomalies
from ...engine.feature_cache import EpochLoader, FeatureCache, choose_cache_mode
from ...engine.training import StageResult, fit_stage, seed_everything
from .config import TRAINING
from .model import AnomalyCLIP

logger = logging.getLogger(__name__)


def _feature_bytes(detector: AnomalyCLIP) -> int:
    grid = detector.backbone.grid_size()
    tokens = 1 + grid[0] * grid[1]
    embed = detector.backbone.embed_dim
    size = detector.image_size
    return 4 * embed * (1 + len(detector.config.features_list) * tokens) + size * size + 16


def train_anomalyclip(detector: AnomalyCLIP, dataset: Dataset, output_dir: str | Path,
                      epochs: int = TRAINING.epochs, learning_rate: float = TRAINING.learning_rate,
                      batch_size: int = TRAINING.batch_size, seed: int = TRAINING.seed,
                      feature_cache: str = "auto", num_workers: int = 0, save_freq: int = 1,
                      print_freq: int = 1, resume: bool = False, precision: str = "auto",
                      export_official: bool = True, run_settings: Optional[Dict[str, Any]] = None) -> StageResult:
    """Train the prompt learner of ``detector`` with the reference optimiser (Adam, betas 0.5/0.999).

    With ``feature_cache`` other than ``off``, the first epoch stores the frozen image features
    and later epochs replay them; the per-epoch sample order is the same either way, so the
    learnt prompts equal those of recomputing the features every epoch (to float rounding: a
    matmul may round differently when an image shares its batch with other images). Data that
    changes every epoch (a :class:`~anomaly_clip.data.pseudo_anomaly.PseudoAnomalyDataset`) is
    never cached.
    """
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
    mode = choose_cache_mode(feature_cache, _feature_bytes(detector), share, detector.device,
                             varies_by_epoch=getattr(dataset, "varies_by_epoch", False))
    cache = None
    if mode != "off":
        cache = FeatureCache(len(dataset), mode, directory=Path(output_dir) / "feature_cache", device=detector.device)
        logger.info("Frozen image features are cached (%s) after the first epoch", mode)
    loader = EpochLoader(dataset, batch_size=batch_size, seed=seed, num_workers=num_workers, cache=cache)
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

    optimizer = torch.optim.Adam(detector.prompt_learner.parameters(), lr=learning_rate, betas=(0.5, 0.999))
    try:
        return fit_stage(detector, loader, optimizer, step, epochs, output_dir, save_freq=save_freq,
                         print_freq=print_freq, resume=resume, precision=precision,
                         export_official=export_official, run_settings=run_settings)
    finally:
        if cache is not None:
            cache.close()
