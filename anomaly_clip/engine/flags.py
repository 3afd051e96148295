"""Command-line options: the flags every entry point shares, and the base of each method's own.

A method's flags live in its folder (``methods/<name>/flags.py``) as a :class:`MethodFlags`
subclass; detectors know nothing of argparse.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional

if TYPE_CHECKING:
    from .detector import AnomalyDetector

from ..clip.backbone import ACTIVATIONS, POS_EMBED_INTERPOLATIONS, BackboneConfig
from ..data.dataset import AnomalyDataset
from ..data.formats import load_samples
from ..data.pseudo_anomaly import PSEUDO_DEFECT_TYPES, PseudoAnomalies
from .distributed import get_rank, is_distributed, is_main_process
from .precision import PRECISIONS


def add_backbone_arguments(parser: argparse.ArgumentParser, precision_default: str = "auto") -> None:
    """Backbone, device and precision flags. Training passes ``precision_default="fp32"``: the
    official runs train in float32, and mixed precision changes the optimiser's trajectory."""
    group = parser.add_argument_group("backbone")
    group.add_argument("--model", "--model_name", dest="model", default=None, help="open_clip model name (default ViT-L-14-336)")
    group.add_argument("--pretrained", default=None, help="open_clip pretrained tag (default openai)")
    group.add_argument("--weights", default=None,
                       help="local CLIP weights: OpenAI file (e.g. ViT-L-14-336px.pt) or open_clip checkpoint")
    group.add_argument("--random-init", action="store_true",
                       help="untrained backbone, for tests and smoke runs only (numbers are meaningless)")
    group.add_argument("--activation", choices=ACTIVATIONS, default=None,
                       help="MLP activation of the backbone (default: the method's reference setting)")
    group.add_argument("--pos-embed-interpolation", choices=POS_EMBED_INTERPOLATIONS, default=None,
                       help="position-embedding resize mode (default: the method's reference setting)")
    group.add_argument("--image_size", "--img_size", dest="image_size", type=int, default=None,
                       help="input resolution (default 518)")
    group.add_argument("--cache-dir", default=None, help="open_clip/Hugging Face cache folder for pretrained tags")
    network = group.add_mutually_exclusive_group()
    network.add_argument("--offline", dest="download", action="store_false", default=None,
                         help="never download weights; use local files/cache only")
    network.add_argument("--download", dest="download", action="store_true", default=None,
                         help="download uncached pretrained weights even if the quick connection check fails "
                              "(default: download only when the hub answers)")
    group.add_argument("--device", default="auto", help="cuda, cuda:1, cpu, or auto (CUDA when present)")
    group.add_argument("--precision", choices=PRECISIONS, default=precision_default,
                       help=f"fp32, or mixed precision for speed: auto = bf16/fp16 autocast on GPU, fp32 on CPU "
                            f"(default {precision_default}; see docs/protocols.md for what it may change)")


def backbone_config_from_args(args: argparse.Namespace, base: BackboneConfig) -> BackboneConfig:
    """``base`` (the method's defaults or a checkpoint's) updated by the flags that were given."""
    config = base.with_updates(
        model_name=args.model, pretrained=args.pretrained, activation=args.activation,
        pos_embed_interpolation=args.pos_embed_interpolation, image_size=args.image_size,
        cache_dir=args.cache_dir,
    )
    if args.weights:
        config = replace(config, weights_path=args.weights, random_init=False)
    if args.random_init:
        config = replace(config, random_init=True, weights_path=None)
    if args.download is not None:
        config = replace(config, download=args.download)
    return config


def add_data_arguments(parser: argparse.ArgumentParser, path_flag: str, split_default: str,
                       required: bool = True) -> None:
    group = parser.add_argument_group("data")
    group.add_argument(path_flag, required=required, help="dataset root holding its metadata file")
    group.add_argument("--dataset", default=None,
                       help="dataset name (used for reports and, for AA-CLIP, class descriptions and blur)")
    group.add_argument("--split", default=split_default,
                       help=f"metadata split to read (default {split_default!r})")
    group.add_argument("--metadata", default=None, help="explicit metadata file (meta.json or jsonl)")
    group.add_argument("--num_workers", type=int, default=2, help="data-loading worker processes")


def add_pseudo_anomaly_arguments(parser: argparse.ArgumentParser) -> None:
    """Training-data flags every method shares: pseudo-anomalies painted on normal images."""
    group = parser.add_argument_group("pseudo-anomalies (training on normal images)")
    group.add_argument("--synthesize_anomalies", type=float, default=0.0, metavar="P",
                       help="paint a defect with its exact mask on a fraction P of the normal training images, "
                            "anew every epoch (seeded by --seed); 0 (default) trains on the data as it is")
    group.add_argument("--synthesize_defects", nargs="+", choices=PSEUDO_DEFECT_TYPES, default=None,
                       metavar="KIND", help=f"defect kinds to paint (default all: {' '.join(PSEUDO_DEFECT_TYPES)})")


def pseudo_anomalies_from_args(args: argparse.Namespace) -> Optional[PseudoAnomalies]:
    """The pseudo-anomaly settings of a training run, None when it paints none."""
    probability = getattr(args, "synthesize_anomalies", 0.0) or 0.0
    if probability == 0:
        if getattr(args, "synthesize_defects", None):
            raise ValueError("--synthesize_defects needs --synthesize_anomalies P with P > 0")
        return None
    kinds = tuple(getattr(args, "synthesize_defects", None) or PSEUDO_DEFECT_TYPES)
    return PseudoAnomalies(probability, kinds, seed=args.seed)


def add_reference_arguments(parser: argparse.ArgumentParser) -> None:
    """Evaluation flags every method shares: few-shot normal references fused with its maps."""
    group = parser.add_argument_group("few-shot normal references")
    group.add_argument("--reference_images", default=None, metavar="K|DIR|FILE",
                       help="K normal images per class from the dataset's --reference_split, a folder of normal "
                            "images (one sub-folder per class, or --class_name), or a saved memory bank")
    group.add_argument("--class_name", default=None, help="class of the images directly in a --reference_images DIR")
    group.add_argument("--reference_weight", type=float, default=0.5, metavar="W",
                       help="map = (1-W) text map + W reference map; score likewise with the reference map's "
                            "maximum (default 0.5)")
    group.add_argument("--reference_split", default="train", help="split the K references come from (default train)")
    group.add_argument("--reference_seed", type=int, default=0, help="seed of the choice of K references per class")
    group.add_argument("--save_reference_bank", default=None, metavar="FILE",
                       help="write the memory bank to FILE, for --reference_images FILE later")


def _quiet_open_clip(record: logging.LogRecord) -> bool:
    """open_clip logs model-building chatter at INFO on the root logger; keep only its warnings."""
    return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


def setup_logging(save_path: Optional[str | Path] = None, filename: str = "log.txt", verbose: bool = False) -> None:
    """Log to the console and, when ``save_path`` is given, to ``save_path/filename``.

    Under ``torchrun`` only rank 0 logs information and writes the file; the other processes
    print their warnings and errors, tagged with their rank.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    main = is_main_process()
    if save_path is not None and main:
        Path(save_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(save_path) / filename))
    for handler in handlers:
        handler.addFilter(_quiet_open_clip)
    level = (logging.DEBUG if verbose else logging.INFO) if main else logging.WARNING
    rank = f"[rank {get_rank()}] " if is_distributed() else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def run_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The plain values of parsed flags, stored with checkpoints so a run can be traced."""
    return {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, type(None)))}


class MethodFlags:
    """Command-line face of one method: its flags, their translation into its config, and the
    training recipe they start. Subclasses override what their method needs."""

    def add_train_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the method's own training flags (reference flag names) to ``parser``."""

    def add_test_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the method's own evaluation flags to ``parser``."""

    def config_from_args(self, args: argparse.Namespace, base: Optional[dict] = None) -> Dict[str, Any]:
        """Method-config values set on the command line (``None`` flags leave ``base`` as is)."""
        return dict(base or {})

    def train_from_args(self, args: argparse.Namespace) -> Path:
        """Build the detector and data from parsed flags, train, and return the final checkpoint."""
        raise TypeError(f"{type(self).__name__} does not train")

    def evaluation_dataset(self, args: argparse.Namespace, detector: "AnomalyDetector") -> AnomalyDataset:
        """Test-time dataset from ``--data_path/--split/--metadata`` with the method's transforms."""
        samples = load_samples(args.data_path, split=args.split, metadata=args.metadata)
        return AnomalyDataset(samples, args.data_path, image_size=detector.image_size,
                              mask_interpolation=detector.mask_interpolation)
