"""Command-line entry points: ``train``, ``test``, ``demo`` and ``summarize``.

``train.py`` and ``test.py`` at the repository root call :func:`train_main` / :func:`test_main`;
the ``anomaly-clip`` console command exposes all of them as sub-commands. Flag names follow the
reference scripts; each method adds its own flags through its detector class.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .checkpoint import identify_checkpoint, load
from .detector import METHODS, get_method
from .evaluation import METRIC_LEVELS, evaluate
from .options import add_backbone_arguments, add_data_arguments, backbone_config_from_args, setup_logging

logger = logging.getLogger(__name__)


def _method_from_argv(argv: Sequence[str], default: Optional[str]) -> Optional[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=default)
    known, _ = pre.parse_known_args(argv)
    return known.method


def build_train_parser(method: str) -> argparse.ArgumentParser:
    cls = get_method(method)
    parser = argparse.ArgumentParser("train.py", description=f"Train {cls.method_name} prompts/adapters.")
    parser.add_argument("--method", default="anomalyclip", choices=sorted(METHODS), help="method to train")
    parser.add_argument("--save_path", default="./checkpoints", help="folder for checkpoints and the log")
    add_data_arguments(parser, "--train_data_path", split_default="test")
    parser.add_argument("--seed", type=int, default=111, help="random seed")
    parser.add_argument("--print_freq", type=int, default=1, help="log every N epochs")
    parser.add_argument("--save_freq", type=int, default=1, help="checkpoint every N epochs")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --save_path")
    parser.add_argument("--no-export-official", dest="export_official", action="store_false",
                        help="do not also write checkpoints in the reference code's format")
    add_backbone_arguments(parser)
    cls.add_train_arguments(parser)
    return parser


def train_main(argv: Optional[Sequence[str]] = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = _method_from_argv(argv, "anomalyclip")
    args = build_train_parser(method).parse_args(argv)
    setup_logging(args.save_path, "log.txt")
    path = get_method(args.method).train_from_args(args)
    logger.info("Training finished; last checkpoint: %s", path)
    return path


def build_test_parser(method: str) -> argparse.ArgumentParser:
    cls = get_method(method)
    parser = argparse.ArgumentParser("test.py", description="Evaluate a trained detector on a dataset.")
    parser.add_argument("--method", default=None, choices=sorted(METHODS),
                        help="method of the checkpoint (detected from the file when omitted)")
    parser.add_argument("--checkpoint_path", required=True,
                        help="our checkpoint, or an official one (AnomalyCLIP epoch_15.pth; AA-CLIP folder)")
    parser.add_argument("--save_path", default="./results", help="folder for the log, tables and outputs")
    add_data_arguments(parser, "--data_path", split_default="test")
    parser.add_argument("--metrics", choices=METRIC_LEVELS, default="image-pixel-level")
    parser.add_argument("--aupro", choices=("compat", "exact"), default="compat",
                        help="AUPRO definition: compat = 200 thresholds as in the published tables, "
                             "exact = MVTec benchmark integral")
    parser.add_argument("--batch_size", type=int, default=8, help="evaluation batch size")
    parser.add_argument("--save-predictions", dest="save_predictions", default=None, metavar="DIR",
                        help="write one .npz per class (paths, labels, scores, maps)")
    parser.add_argument("--visualize", action="store_true", help="write image | mask | map overlays as PNG")
    add_backbone_arguments(parser)
    cls.add_test_arguments(parser)
    return parser


def test_main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--checkpoint_path")
    pre.add_argument("--method")
    known, _ = pre.parse_known_args(argv)
    method = known.method
    if method is None and known.checkpoint_path and "-h" not in argv and "--help" not in argv:
        method = identify_checkpoint(known.checkpoint_path)[0]
    parser = build_test_parser(method or "anomalyclip")
    args = parser.parse_args(argv)
    setup_logging(args.save_path, "test_log.txt")
    cls = get_method(method)
    detector = load(
        args.checkpoint_path, device=args.device,
        method_config=cls.config_from_args(args, {}),
        configure_backbone=lambda base: backbone_config_from_args(args, base),
    )
    dataset = cls.evaluation_dataset(args, detector)
    report = evaluate(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                      metrics=args.metrics, aupro=args.aupro, precision=args.precision,
                      save_predictions=args.save_predictions,
                      visualize=Path(args.save_path) / "heatmaps" if args.visualize else None)
    settings = {
        "method": detector.method_name, "dataset": args.dataset or Path(args.data_path).name,
        "checkpoint": str(args.checkpoint_path), "method_config": detector.config.to_dict(),
        "backbone_config": detector.backbone.config.to_dict(), "metrics": args.metrics, "aupro": args.aupro,
    }
    logger.info("Results on %s:\n%s", settings["dataset"], report.to_markdown())
    report.save(args.save_path, settings)
    return {"report": report, "settings": settings}


def summarize_main(argv: Optional[Sequence[str]] = None) -> str:
    """Gather the mean rows of several ``test.py`` result folders into one table."""
    from tabulate import tabulate

    parser = argparse.ArgumentParser("anomaly-clip summarize", description=summarize_main.__doc__)
    parser.add_argument("result_dirs", nargs="+", help="folders written by test.py --save_path")
    parser.add_argument("--output", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args(argv)
    rows: List[dict] = []
    for directory in args.result_dirs:
        path = Path(directory) / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run test.py with --save_path {directory} first")
        data = json.loads(path.read_text())
        mean = data["mean"]
        rows.append({"dataset": data["settings"].get("dataset", directory), **mean})
    headers = list(dict.fromkeys(key for row in rows for key in row))
    table = tabulate([[_percent(row.get(h)) for h in headers] for row in rows], headers=headers, tablefmt="pipe")
    sys.stdout.write(table + "\n")
    if args.output:
        Path(args.output).write_text(table + "\n")
    return table


def _percent(value: object) -> object:
    if value is None:
        return "N/A"
    if isinstance(value, float):
        return f"{100 * value:.1f}"
    return value


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .demo import demo_main

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "test": test_main, "demo": demo_main, "summarize": summarize_main}
    if not argv or argv[0] not in commands:
        names = ", ".join(commands)
        sys.stderr.write(f"usage: anomaly-clip {{{names}}} [options]\n")
        raise SystemExit(2)
    commands[argv[0]](argv[1:])
