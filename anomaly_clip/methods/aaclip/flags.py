"""AA-CLIP's command-line flags (reference names); defaults come from :mod:`.config`.

:class:`AdaptedImageFlags` holds the image-side flags that the hybrid method shares.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ...clip.backbone import load_backbone
from ...data.formats import load_samples
from ...engine.checkpoint import initialise_from_checkpoint
from ...engine.flags import MethodFlags, backbone_config_from_args, pseudo_anomalies_from_args, run_settings
from ...engine.training import seed_everything
from .class_prompts import read_descriptions
from .config import DOMAIN_BLUR, IMAGE_SCORES, TEXT_LOSS_LEVELS, VV_AXES, AAClipConfig, AAClipTrainSettings
from .model import AAClipDetector
from .training import build_training_datasets, train_aaclip

logger = logging.getLogger(__name__)

IMAGE_DEFAULTS = AAClipConfig()
TRAINING = AAClipTrainSettings()


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


class AdaptedImageFlags(MethodFlags):
    """Flags of AA-CLIP's image side: adapters, levels, map blur and image scores."""

    config_fields: Tuple[str, ...] = ("image_adapt_weight", "image_adapt_until", "relu", "domain", "blur_kernel",
                                      "blur_sigma", "image_score")

    def add_architecture_flags(self, group: argparse._ArgumentGroup) -> None:
        """Flags shaping the trainable parts, shared by training and evaluation."""
        group.add_argument("--image_adapt_weight", type=float, default=None,
                           help=f"image adapter blend weight ({IMAGE_DEFAULTS.image_adapt_weight:g})")
        group.add_argument("--image_adapt_until", type=int, default=None,
                           help=f"adapted visual blocks ({IMAGE_DEFAULTS.image_adapt_until})")
        group.add_argument("--relu", action="store_true", default=None,
                           help="LeakyReLU after the patch/detection projections (read from reference files)")
        group.add_argument("--levels", type=int, nargs="+", default=None,
                           help=f"visual blocks whose patch tokens are projected (default "
                                f"{' '.join(map(str, IMAGE_DEFAULTS.levels))})")

    def add_image_training_flags(self, group: argparse._ArgumentGroup) -> None:
        """Training data and the image stage (reference names and defaults)."""
        group.add_argument("--shot", type=int, default=0,
                           help="few-shot training: K images per class, normal:anomalous 1:1 (0 = full shot)")
        group.add_argument("--training_mode", choices=("few_shot", "full_shot"), default=None,
                           help="full_shot ignores --shot; few_shot needs --shot > 0 (default: from --shot)")
        group.add_argument("--image_epoch", type=int, default=TRAINING.image_epoch, help="image-stage epochs")
        group.add_argument("--image_lr", type=float, default=TRAINING.image_lr, help="image-stage Adam learning rate")
        group.add_argument("--image_batch_size", type=int, default=TRAINING.image_batch_size,
                           help="image-stage batch size")
        group.add_argument("--image_milestones", type=int, nargs="+", default=list(TRAINING.image_milestones),
                           help="image-stage MultiStepLR milestones in iterations")
        group.add_argument("--image_lr_gamma", type=float, default=TRAINING.image_lr_gamma,
                           help="image-stage MultiStepLR factor")
        group.add_argument("--seeded_augmentation", action="store_true",
                           help="draw each image's augmentation from (seed, epoch, image) rather than the global "
                                "stream: independent of workers and processes (always on under torchrun)")

    def add_test_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AA-CLIP image side")
        self.add_architecture_flags(group)
        group.add_argument("--domain", choices=sorted(DOMAIN_BLUR), default=None,
                           help="blur settings of this domain (default: the dataset's domain)")
        group.add_argument("--blur_kernel", type=int, default=None, help="map blur kernel (7 industrial, 9 medical)")
        group.add_argument("--blur_sigma", type=float, default=None, help="map blur sigma (1 industrial, 1.5 medical)")
        group.add_argument("--image_score", choices=IMAGE_SCORES, default=None,
                           help="fused: per-class normalised detection score and map maximum, as the reference "
                                "evaluation (default); detection: detection score alone")

    def config_from_args(self, args: argparse.Namespace, base: Optional[dict] = None) -> Dict[str, Any]:
        values = dict(base or {})
        for name in self.config_fields:
            if getattr(args, name, None) is not None:
                values[name] = getattr(args, name)
        if getattr(args, "levels", None):
            values["levels"] = tuple(args.levels)
        dataset = getattr(args, "dataset", None)
        data_path = getattr(args, "data_path", None) or getattr(args, "train_data_path", None)
        if dataset or data_path:
            values["dataset"] = dataset or Path(data_path).name
        return values


class AAClipFlags(AdaptedImageFlags):
    config_fields = AdaptedImageFlags.config_fields + ("text_adapt_weight", "text_adapt_until")

    def add_architecture_flags(self, group: argparse._ArgumentGroup) -> None:
        super().add_architecture_flags(group)
        group.add_argument("--text_adapt_weight", type=float, default=None,
                           help=f"text adapter blend weight ({IMAGE_DEFAULTS.text_adapt_weight:g})")
        group.add_argument("--text_adapt_until", type=int, default=None,
                           help=f"adapted text blocks ({IMAGE_DEFAULTS.text_adapt_until})")
        group.add_argument("--class_descriptions", default=None,
                           help="JSON file {class name: description} overriding the built-in descriptive names")

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AA-CLIP (reference flag names)")
        self.add_architecture_flags(group)
        group.add_argument("--text_epoch", type=int, default=TRAINING.text_epoch,
                           help="stage-1 (text adapter) epochs; 0 skips it")
        group.add_argument("--text_lr", type=float, default=TRAINING.text_lr, help="stage-1 Adam learning rate")
        group.add_argument("--text_batch_size", type=int, default=TRAINING.text_batch_size, help="stage-1 batch size")
        group.add_argument("--text_norm_weight", type=float, default=TRAINING.text_norm_weight,
                           help="weight of the disentangle loss (anchor orthogonality), gamma in the paper")
        group.add_argument("--surgery_until_layer", type=int, default=TRAINING.surgery_until_layer,
                           help="stage-1 V-V CLIP: the last N-1 visual blocks use V-V attention")
        group.add_argument("--vv_axis", choices=VV_AXES, default=TRAINING.vv_axis,
                           help="stage-1 V-V attention across the batch at each token (reference code) or "
                                "across each image's tokens")
        group.add_argument("--text_loss_levels", choices=TEXT_LOSS_LEVELS, default=TRAINING.text_loss_levels,
                           help="stage-1 segmentation loss on the last level only (reference code) or summed "
                                "over all levels")
        self.add_image_training_flags(group)

    def config_from_args(self, args: argparse.Namespace, base: Optional[dict] = None) -> Dict[str, Any]:
        values = super().config_from_args(args, base)
        if getattr(args, "class_descriptions", None):
            values["class_descriptions"] = read_descriptions(args.class_descriptions)
        return values

    def train_from_args(self, args: argparse.Namespace) -> Path:
        """``train.py --method aaclip``: build everything from flags and train both stages."""
        settings = settings_from_args(args)
        seed_everything(settings.seed)
        backbone = load_backbone(backbone_config_from_args(args, AAClipDetector.default_backbone_config()),
                                 args.device)
        config = AAClipConfig.from_dict(self.config_from_args(args))
        detector = AAClipDetector(backbone, config)
        if getattr(args, "init_checkpoint", None):
            initialise_from_checkpoint(detector, args.init_checkpoint)
        shot = shots_from_args(args)
        samples = load_samples(args.train_data_path, split=args.split, metadata=args.metadata)
        text_dataset, image_dataset = build_training_datasets(samples, args.train_data_path,
                                                              backbone.config.image_size, shot, settings.seed,
                                                              seeded_augmentation=args.seeded_augmentation,
                                                              pseudo_anomalies=pseudo_anomalies_from_args(args))
        logger.info("Training AA-CLIP on %s (%s split, %s, %d images), dataset descriptions %r: %s / %s",
                    args.train_data_path, args.split, f"{shot}-shot" if shot else "full shot", len(text_dataset),
                    config.dataset, json.dumps(config.to_dict()), json.dumps(asdict(settings)))
        return train_aaclip(detector, text_dataset, image_dataset, args.save_path, settings,
                            num_workers=args.num_workers, resume=args.resume, precision=args.precision,
                            export_official=args.export_official, save_freq=args.save_freq,
                            print_freq=args.print_freq, run_settings=run_settings(args))
