"""``train.py`` / ``anomaly-clip train``: train any registered method from flags."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..engine.distributed import init_distributed, is_main_process
from ..engine.flags import add_backbone_arguments, add_data_arguments, add_pseudo_anomaly_arguments, setup_logging
from ..methods import METHODS, get_method
from .config import add_config_argument, parse_arguments, preparse, write_resolved_config

logger = logging.getLogger(__name__)


def build_train_parser(method: str) -> argparse.ArgumentParser:
    spec = get_method(method)
    parser = argparse.ArgumentParser("train.py", description=f"Train {spec.name} prompts/adapters.")
    parser.add_argument("--method", default="anomalyclip", choices=sorted(METHODS), help="method to train")
    parser.add_argument("--save_path", default="./checkpoints", help="folder for checkpoints and the log")
    add_data_arguments(parser, "--train_data_path", split_default="test")
    add_pseudo_anomaly_arguments(parser)
    parser.add_argument("--seed", type=int, default=111, help="random seed")
    parser.add_argument("--print_freq", type=int, default=1, help="log every N epochs")
    parser.add_argument("--save_freq", type=int, default=1, help="checkpoint every N epochs")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --save_path")
    parser.add_argument("--init_checkpoint", default=None, metavar="CKPT",
                        help="start from the learnt weights of this checkpoint (ours or official, same method): "
                             "fine-tuning, e.g. a released model on TN3K's training split")
    parser.add_argument("--no-export-official", dest="export_official", action="store_false",
                        help="do not also write checkpoints in the reference code's format")
    add_config_argument(parser, "train")
    add_backbone_arguments(parser, precision_default="fp32")
    spec.flags.add_train_arguments(parser)
    return parser


def train_main(argv: Optional[Sequence[str]] = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = preparse(argv, "train", ["method"])["method"] or "anomalyclip"
    parser = build_train_parser(method)
    args = parse_arguments(parser, argv, "train")
    args.device = init_distributed(args.device)
    setup_logging(args.save_path, "log.txt")
    if is_main_process():
        write_resolved_config(args, parser, "train", args.save_path, source=args.config)
    path = get_method(args.method).flags.train_from_args(args)
    logger.info("Training finished; last checkpoint: %s", path)
    return path
