"""AnomalyCLIP's command-line flags (reference names); defaults come from :mod:`.config`."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional

from ...clip.backbone import load_backbone
from ...data.dataset import AnomalyDataset
from ...data.formats import load_samples
from ...data.pseudo_anomaly import apply_pseudo_anomalies
from ...engine.checkpoint import initialise_from_checkpoint
from ...engine.feature_cache import CACHE_MODES
from ...engine.flags import MethodFlags, backbone_config_from_args, pseudo_anomalies_from_args, run_settings
from ...engine.training import seed_everything
from .config import DEFAULTS, TRAINING, AnomalyCLIPConfig
from .model import AnomalyCLIP
from .training import train_anomalyclip

logger = logging.getLogger(__name__)

CONFIG_FLAGS = ("n_ctx", "depth", "t_n_ctx", "dpam_layers", "sigma", "seg_loss_weight")


def add_prompt_flags(group: argparse._ArgumentGroup) -> None:
    """Shape of the learnable prompts (shared with the hybrid method)."""
    group.add_argument("--depth", type=int, default=None, help=f"deep text prompt depth (default {DEFAULTS.depth})")
    group.add_argument("--n_ctx", type=int, default=None, help=f"learnable context length (default {DEFAULTS.n_ctx})")
    group.add_argument("--t_n_ctx", type=int, default=None,
                       help=f"deep text tokens per block (default {DEFAULTS.t_n_ctx})")


def _add_architecture_flags(group: argparse._ArgumentGroup) -> None:
    add_prompt_flags(group)
    group.add_argument("--features_list", type=int, nargs="+", default=None,
                       help=f"image blocks whose patch tokens make the maps (default {' '.join(map(str, DEFAULTS.features_list))}; "
                            "paper: 6 12 18 24)")
    group.add_argument("--dpam_layers", type=int, default=None,
                       help=f"DPAM depth (default {DEFAULTS.dpam_layers}: the last {DEFAULTS.dpam_layers - 1} blocks)")
    group.add_argument("--dpam_attention", choices=("vv", "qq", "kk"), default=None,
                       help=f"DPAM attention variant (default {DEFAULTS.dpam_attention})")
    group.add_argument("--object_classes", nargs="+", default=None,
                       help="object-aware ablation: one prompt pair per listed class name")


class AnomalyCLIPFlags(MethodFlags):
    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP")
        _add_architecture_flags(group)
        group.add_argument("--epoch", type=int, default=TRAINING.epochs, help="training epochs")
        group.add_argument("--learning_rate", type=float, default=TRAINING.learning_rate, help="Adam learning rate")
        group.add_argument("--batch_size", type=int, default=TRAINING.batch_size, help="training batch size")
        group.add_argument("--seg_loss_weight", type=float, default=None,
                           help=f"lambda of the local loss (default {DEFAULTS.seg_loss_weight:g}); 0 trains the "
                                "global loss only, for data without masks")
        group.add_argument("--feature_cache", default="auto", choices=CACHE_MODES,
                           help="reuse frozen image features after the first epoch (auto: device/host/disk "
                                "by size; off recomputes every epoch)")

    def add_test_arguments(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("AnomalyCLIP")
        _add_architecture_flags(group)
        group.add_argument("--sigma", type=float, default=None,
                           help=f"Gaussian sigma of the anomaly map (default {DEFAULTS.sigma:g})")

    def config_from_args(self, args: argparse.Namespace, base: Optional[dict] = None) -> Dict[str, Any]:
        values = dict(base or {})
        for name in CONFIG_FLAGS:
            if getattr(args, name, None) is not None:
                values[name] = getattr(args, name)
        if getattr(args, "features_list", None):
            values["features_list"] = tuple(args.features_list)
        if getattr(args, "dpam_attention", None):
            values["dpam_attention"] = args.dpam_attention
        if getattr(args, "object_classes", None):
            values["object_classes"] = tuple(args.object_classes)
        return values

    def train_from_args(self, args: argparse.Namespace) -> Path:
        """``train.py --method anomalyclip``: build everything from flags and train."""
        seed_everything(args.seed)
        backbone = load_backbone(backbone_config_from_args(args, AnomalyCLIP.default_backbone_config()), args.device)
        config = AnomalyCLIPConfig.from_dict(self.config_from_args(args))
        detector = AnomalyCLIP(backbone, config)
        if getattr(args, "init_checkpoint", None):
            initialise_from_checkpoint(detector, args.init_checkpoint)
        samples = load_samples(args.train_data_path, split=args.split, metadata=args.metadata)
        dataset = apply_pseudo_anomalies(AnomalyDataset(samples, args.train_data_path,
                                                        image_size=backbone.config.image_size),
                                         pseudo_anomalies_from_args(args))
        logger.info("Training AnomalyCLIP on %s (%s split, %d images): %s", args.train_data_path, args.split,
                    len(dataset), json.dumps(config.to_dict()))
        result = train_anomalyclip(
            detector, dataset, args.save_path, epochs=args.epoch, learning_rate=args.learning_rate,
            batch_size=args.batch_size, seed=args.seed, feature_cache=args.feature_cache,
            num_workers=args.num_workers, save_freq=args.save_freq, print_freq=args.print_freq,
            resume=args.resume, precision=args.precision, export_official=args.export_official,
            run_settings=run_settings(args),
        )
        return result.checkpoints[-1]
