"""``test.py`` / ``anomaly-clip test``: evaluate a checkpoint (ours or official) on a dataset."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..engine.distributed import init_distributed, is_main_process
from ..engine.evaluation import METRIC_LEVELS, evaluate
from ..engine.flags import (add_backbone_arguments, add_data_arguments, add_reference_arguments,
                            backbone_config_from_args, setup_logging)
from ..engine.references import memory_bank_from_args
from ..methods import METHODS, get_method, load
from .config import (add_config_argument, checkpoint_method, parse_arguments, read_config_file,
                     write_resolved_config)

logger = logging.getLogger(__name__)


def build_test_parser(method: str) -> argparse.ArgumentParser:
    spec = get_method(method)
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
    add_config_argument(parser, "test")
    add_reference_arguments(parser)
    add_backbone_arguments(parser)
    spec.flags.add_test_arguments(parser)
    return parser


def test_main(argv: Optional[Sequence[str]] = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = checkpoint_method(argv, "test")
    parser = build_test_parser(method)
    args = parse_arguments(parser, argv, "test")
    args.device = init_distributed(args.device)
    setup_logging(args.save_path, "test_log.txt")
    if is_main_process():
        write_resolved_config(args, parser, "test", args.save_path, source=args.config)
    flags = get_method(method).flags
    detector = load(
        args.checkpoint_path, device=args.device,
        method_config=flags.config_from_args(args, {}),
        configure_backbone=lambda base: backbone_config_from_args(args, base),
    )
    dataset = flags.evaluation_dataset(args, detector)
    bank = memory_bank_from_args(args, detector)
    report = evaluate(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                      metrics=args.metrics, aupro=args.aupro, precision=args.precision,
                      save_predictions=args.save_predictions,
                      visualize=Path(args.save_path) / "heatmaps" if args.visualize else None,
                      references=bank, reference_weight=args.reference_weight)
    settings = {
        "method": detector.method_name, "dataset": args.dataset or Path(args.data_path).name,
        "checkpoint": str(args.checkpoint_path), "method_config": detector.config.to_dict(),
        "backbone_config": detector.backbone.config.to_dict(), "metrics": args.metrics, "aupro": args.aupro,
    }
    if bank is not None:
        settings["references"] = {"source": str(args.reference_images), "weight": args.reference_weight,
                                  "images_per_class": {name: len(paths) for name, paths in bank.sources.items()}}
    if args.config:
        settings["config"] = str(args.config)
        reference = read_config_file(args.config).get("reference")
        if reference:
            settings["published_reference"] = reference
    logger.info("Results on %s:\n%s", settings["dataset"], report.to_markdown())
    if is_main_process():
        report.save(args.save_path, settings)
    return {"report": report, "settings": settings}
