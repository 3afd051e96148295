"""AA-CLIP training: stage 1 adapts the text tower, stage 2 the image tower against fixed anchors.

Both stages run through :func:`anomaly_clip.training.fit_stage` (mixed precision, atomic
checkpoints, resume, reference-format export); each stage resumes on its own, so an interrupted
run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

from .backbone import load_backbone
from .data.augment import AAClipAugmentation
from .data.dataset import AnomalyDataset
from .data.fewshot import few_shot_subset
from .data.formats import load_samples
from .feature_cache import EpochLoader
from .methods.aaclip import TEXT_LOSS_LEVELS, VV_AXES, AAClipConfig, AAClipDetector
from .options import backbone_config_from_args
from .training import StageResult, checkpoint_path, fit_stage, seed_everything

logger = logging.getLogger(__name__)

ADAM_BETAS = (0.5, 0.999)


@dataclass
class AAClipTrainSettings:
    """Optimisation settings of both stages (reference defaults)."""

    text_epoch: int = 5
    image_epoch: int = 20
    text_lr: float = 1e-5
    image_lr: float = 5e-4
    text_batch_size: int = 16
    image_batch_size: int = 2
    text_norm_weight: float = 0.1
    surgery_until_layer: int = 20
    vv_axis: str = "batch"
    text_loss_levels: str = "last"
    image_milestones: Tuple[int, ...] = (16000, 32000)
    image_lr_gamma: float = 0.5
    seed: int = 111

    def __post_init__(self) -> None:
        if self.text_epoch < 0 or self.image_epoch < 1:
            raise ValueError(f"need text_epoch >= 0 and image_epoch >= 1, got {self.text_epoch}, {self.image_epoch}")
        if self.vv_axis not in VV_AXES:
            raise ValueError(f"vv_axis must be one of {VV_AXES}, got {self.vv_axis!r}")
        if self.text_loss_levels not in TEXT_LOSS_LEVELS:
            raise ValueError(f"text_loss_levels must be one of {TEXT_LOSS_LEVELS}, got {self.text_loss_levels!r}")
        self.image_milestones = tuple(int(m) for m in self.image_milestones)


def _masks(batch: Dict[str, Any]) -> torch.Tensor:
    return (batch["mask"] > 0.5).float()


def train_text_stage(detector: AAClipDetector, dataset: Dataset, output_dir: str | Path,
                     settings: AAClipTrainSettings, num_workers: int = 0, resume: bool = False,
                     precision: str = "auto", export_official: bool = True, save_freq: int = 1,
                     print_freq: int = 1, run_settings: Optional[Dict[str, Any]] = None) -> StageResult:
    """Stage 1: train the text adapter (Adam, no schedule) on segmentation + disentangle loss."""
    detector.config.adapt_text = True
    loader = EpochLoader(dataset, batch_size=settings.text_batch_size, seed=settings.seed, num_workers=num_workers)
    optimizer = torch.optim.Adam(detector.text_adapter.parameters(), lr=settings.text_lr, betas=ADAM_BETAS)

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return detector.text_stage_loss(batch["image"], _masks(batch), list(batch["class_name"]),
                                        disentangle_weight=settings.text_norm_weight,
                                        dpam_layers=settings.surgery_until_layer, vv_axis=settings.vv_axis,
                                        loss_levels=settings.text_loss_levels)

    return fit_stage(detector, loader, optimizer, step, settings.text_epoch, output_dir, stage="text",
                     save_freq=save_freq, print_freq=print_freq, resume=resume, precision=precision,
                     export_official=export_official, run_settings=run_settings)


def train_image_stage(detector: AAClipDetector, dataset: Dataset, output_dir: str | Path,
                      settings: AAClipTrainSettings, num_workers: int = 0, resume: bool = False,
                      precision: str = "auto", export_official: bool = True, save_freq: int = 1,
                      print_freq: int = 1, run_settings: Optional[Dict[str, Any]] = None) -> StageResult:
    """Stage 2: train the image adapter against the fixed anchors (Adam, MultiStepLR per iteration)."""
    loader = EpochLoader(dataset, batch_size=settings.image_batch_size, seed=settings.seed + 1,
                         num_workers=num_workers)
    optimizer = torch.optim.Adam(detector.image_adapter.parameters(), lr=settings.image_lr, betas=ADAM_BETAS)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(settings.image_milestones),
                                                     gamma=settings.image_lr_gamma)

    def step(batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        return detector.image_stage_loss(batch["image"], _masks(batch), batch["label"], list(batch["class_name"]))

    return fit_stage(detector, loader, optimizer, step, settings.image_epoch, output_dir, stage="image",
                     scheduler=scheduler, save_freq=save_freq, print_freq=print_freq, resume=resume,
                     precision=precision, export_official=export_official, run_settings=run_settings)


def train_aaclip(detector: AAClipDetector, text_dataset: Dataset, image_dataset: Dataset, output_dir: str | Path,
                 settings: Optional[AAClipTrainSettings] = None, **stage_options: Any) -> Path:
    """Run both stages and return the last image-stage checkpoint.

    With ``text_epoch == 0`` the text stage is skipped and anchors come from plain CLIP, as in
    the reference code. ``stage_options`` (num_workers, resume, precision, export_official,
    save_freq, print_freq, run_settings) go to both stages.
    """
    settings = settings or AAClipTrainSettings()
    output_dir = Path(output_dir)
    seed_everything(settings.seed)
    if settings.text_epoch > 0:
        result = train_text_stage(detector, text_dataset, output_dir, settings, **stage_options)
        _log_history("text", result)
    else:
        detector.config.adapt_text = False
        logger.info("Text stage skipped: anchors use plain CLIP text features")
    result = train_image_stage(detector, image_dataset, output_dir, settings, **stage_options)
    _log_history("image", result)
    last = checkpoint_path(output_dir, "image", settings.image_epoch)
    if not last.is_file():
        raise FileNotFoundError(f"expected the final checkpoint {last} after training")
    return last


def _log_history(stage: str, result: StageResult) -> None:
    if result.history:
        logger.info("%s stage finished: %s", stage, json.dumps(result.history[-1]))
    else:
        logger.info("%s stage already complete (resumed)", stage)


def settings_from_args(args: argparse.Namespace) -> AAClipTrainSettings:
    """Training settings from the flags present (a method without a text stage has no text flags)."""
    names = [f.name for f in fields(AAClipTrainSettings)]
    return AAClipTrainSettings(**{name: getattr(args, name) for name in names if getattr(args, name, None) is not None})


def shots_from_args(args: argparse.Namespace) -> int:
    """Images per class for few-shot training, 0 for full shot."""
    mode = args.training_mode or ("few_shot" if args.shot > 0 else "full_shot")
    if mode == "full_shot":
        return 0
    if args.shot <= 0:
        raise ValueError("--training_mode few_shot needs --shot K with K > 0")
    return args.shot


def build_training_datasets(samples: Sequence[Any], root: str, image_size: int, shot: int,
                            seed: int) -> Tuple[Dataset, Dataset]:
    """(text-stage, image-stage) datasets: geometric augmentation for both, colour jitter for
    the image stage only; few-shot subsets of ``shot`` images per class when ``shot > 0``."""
    if shot > 0:
        samples = few_shot_subset(samples, shot, seed=seed)
    if not samples:
        raise ValueError("no training samples")
    mask_interpolation = AAClipDetector.mask_interpolation
    text_dataset = AnomalyDataset(samples, root, image_size=image_size, mask_interpolation=mask_interpolation,
                                  augment=AAClipAugmentation(color_jitter=False))
    if text_dataset.image_level_only:
        raise ValueError(f"the training data under {root} has no pixel masks; both AA-CLIP stages need them")
    image_dataset = AnomalyDataset(samples, root, image_size=image_size, mask_interpolation=mask_interpolation,
                                   augment=AAClipAugmentation(color_jitter=True))
    return text_dataset, image_dataset


def train_from_args(args: argparse.Namespace) -> Path:
    """``train.py --method aaclip``: build everything from flags and train both stages."""
    settings = settings_from_args(args)
    seed_everything(settings.seed)
    backbone = load_backbone(backbone_config_from_args(args, AAClipDetector.default_backbone_config()), args.device)
    config = AAClipConfig.from_dict(AAClipDetector.config_from_args(args))
    detector = AAClipDetector(backbone, config)
    shot = shots_from_args(args)
    samples = load_samples(args.train_data_path, split=args.split, metadata=args.metadata)
    text_dataset, image_dataset = build_training_datasets(samples, args.train_data_path, backbone.config.image_size,
                                                          shot, settings.seed)
    logger.info("Training AA-CLIP on %s (%s split, %s, %d images), dataset descriptions %r: %s / %s",
                args.train_data_path, args.split, f"{shot}-shot" if shot else "full shot", len(text_dataset),
                config.dataset, json.dumps(config.to_dict()), json.dumps(asdict(settings)))
    run_settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return train_aaclip(detector, text_dataset, image_dataset, args.save_path, settings,
                        num_workers=args.num_workers, resume=args.resume, precision=args.precision,
                        export_official=args.export_official, save_freq=args.save_freq,
                        print_freq=args.print_freq, run_settings=run_settings)


def train_prompt_adapters_from_args(args: argparse.Namespace) -> Path:
    """``train.py --method anomalyclip_adapters``: AnomalyCLIP prompts (trained here, or taken from
    ``--prompt_checkpoint``), then AA-CLIP's image stage against them."""
    from .anomalyclip_training import train_anomalyclip
    from .checkpoint import load
    from .methods.anomalyclip import AnomalyCLIP
    from .methods.anomalyclip_adapters import PROMPT_FIELDS, PromptAdapterConfig, PromptAdapterDetector

    settings = settings_from_args(args)
    seed_everything(settings.seed)
    values = PromptAdapterDetector.config_from_args(args)
    samples = load_samples(args.train_data_path, split=args.split, metadata=args.metadata)
    stage_options = dict(num_workers=args.num_workers, resume=args.resume, precision=args.precision,
                         export_official=args.export_official, save_freq=args.save_freq, print_freq=args.print_freq)
    if args.prompt_checkpoint:
        prompts = load(args.prompt_checkpoint, device=args.device,
                       configure_backbone=lambda base: backbone_config_from_args(args, base))
        if not isinstance(prompts, AnomalyCLIP):
            raise ValueError(f"--prompt_checkpoint {args.prompt_checkpoint} is a {prompts.method_name} checkpoint, "
                             "not an AnomalyCLIP one")
        values.update({name: getattr(prompts.config, name) for name in PROMPT_FIELDS})
        detector = PromptAdapterDetector(prompts.backbone, PromptAdapterConfig.from_dict(values))
        logger.info("Prompts taken from %s", args.prompt_checkpoint)
    else:
        config = backbone_config_from_args(args, PromptAdapterDetector.default_backbone_config())
        detector = PromptAdapterDetector(load_backbone(config, args.device), PromptAdapterConfig.from_dict(values))
        prompts = AnomalyCLIP(detector.backbone, detector.prompt_config())
        dataset = AnomalyDataset(samples, args.train_data_path, image_size=detector.image_size,
                                 mask_interpolation=AnomalyCLIP.mask_interpolation)
        train_anomalyclip(prompts, dataset, Path(args.save_path) / "prompts", epochs=args.prompt_epoch,
                          learning_rate=args.prompt_lr, batch_size=args.prompt_batch_size, seed=settings.seed,
                          **stage_options)
    detector.load_prompts(prompts)
    _, image_dataset = build_training_datasets(samples, args.train_data_path, detector.image_size,
                                               shots_from_args(args), settings.seed)
    run_settings = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    train_image_stage(detector, image_dataset, args.save_path, settings, run_settings=run_settings, **stage_options)
    last = checkpoint_path(Path(args.save_path), "image", settings.image_epoch)
    if not last.is_file():
        raise FileNotFoundError(f"expected the final checkpoint {last} after training")
    return last
