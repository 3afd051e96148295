"""Flags of the hybrid method: AA-CLIP's image-side flags plus AnomalyCLIP's prompt shape and
its stage-1 settings; training runs AnomalyCLIP's recipe, then AA-CLIP's image stage."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ...clip.backbone import load_backbone
from ...data.dataset import AnomalyDataset
from ...data.formats import load_samples
from ...data.pseudo_anomaly import apply_pseudo_anomalies
from ...engine.checkpoint import initialise_from_checkpoint, load
from ...engine.flags import backbone_config_from_args, pseudo_anomalies_from_args, run_settings
from ...engine.training import checkpoint_path, seed_everything
from ..aaclip.flags import AdaptedImageFlags, settings_from_args, shots_from_args
from ..aaclip.training import build_training_datasets, train_image_stage
from ..anomalyclip.config import TRAINING as PROMPT_TRAINING
from ..anomalyclip.flags import add_prompt_flags
from ..anomalyclip.model import AnomalyCLIP
from ..anomalyclip.training import train_anomalyclip
from .config import PROMPT_FIELDS, PromptAdapterConfig
from .model import PromptAdapterDetector

logger = logging.getLogger(__name__)


class PromptAdapterFlags(AdaptedImageFlags):
    config_fields = AdaptedImageFlags.config_fields + ("n_ctx", "depth", "t_n_ctx")

    def add_architecture_flags(self, group: argparse._ArgumentGroup) -> None:
        super().add_architecture_flags(group)
        add_prompt_flags(group)

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP prompts + AA-CLIP image adapters")
        self.add_architecture_flags(group)
        group.add_argument("--prompt_checkpoint", default=None,
                           help="trained AnomalyCLIP checkpoint (ours or official epoch_15.pth) to take the prompts "
                                "from; without it stage 1 trains them")
        group.add_argument("--prompt_epoch", type=int, default=PROMPT_TRAINING.epochs,
                           help="stage-1 (AnomalyCLIP prompts) epochs")
        group.add_argument("--prompt_lr", type=float, default=PROMPT_TRAINING.learning_rate,
                           help="stage-1 Adam learning rate")
        group.add_argument("--prompt_batch_size", type=int, default=PROMPT_TRAINING.batch_size,
                           help="stage-1 batch size")
        self.add_image_training_flags(group)

    def train_from_args(self, args: argparse.Namespace) -> Path:
        """``train.py --method anomalyclip_adapters``: AnomalyCLIP prompts (trained here, or taken from
        ``--prompt_checkpoint``), then AA-CLIP's image stage against them."""
        settings = settings_from_args(args)
        seed_everything(settings.seed)
        values = self.config_from_args(args)
        pseudo_anomalies = pseudo_anomalies_from_args(args)
        samples = load_samples(args.train_data_path, split=args.split, metadata=args.metadata)
        stage_options = dict(num_workers=args.num_workers, resume=args.resume, precision=args.precision,
                             export_official=args.export_official, save_freq=args.save_freq,
                             print_freq=args.print_freq)
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
            dataset = apply_pseudo_anomalies(AnomalyDataset(samples, args.train_data_path,
                                                            image_size=detector.image_size,
                                                            mask_interpolation=AnomalyCLIP.mask_interpolation),
                                             pseudo_anomalies)
            train_anomalyclip(prompts, dataset, Path(args.save_path) / "prompts", epochs=args.prompt_epoch,
                              learning_rate=args.prompt_lr, batch_size=args.prompt_batch_size, seed=settings.seed,
                              **stage_options)
        detector.load_prompts(prompts)
        if getattr(args, "init_checkpoint", None):
            initialise_from_checkpoint(detector, args.init_checkpoint)
        _, image_dataset = build_training_datasets(samples, args.train_data_path, detector.image_size,
                                                   shots_from_args(args), settings.seed,
                                                   seeded_augmentation=args.seeded_augmentation,
                                                   pseudo_anomalies=pseudo_anomalies)
        train_image_stage(detector, image_dataset, args.save_path, settings, run_settings=run_settings(args),
                          **stage_options)
        last = checkpoint_path(Path(args.save_path), "image", settings.image_epoch)
        if not last.is_file():
            raise FileNotFoundError(f"expected the final checkpoint {last} after training")
        return last
