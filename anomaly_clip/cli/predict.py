"""``anomaly-clip predict``: score one's own images (files, folders, globs) with a trained model.

Writes ``SAVE_PATH/predictions.csv`` (``path,score,label,error``), and on request maps at each
image's original resolution and overlay panels. Thresholds: ``--image_threshold`` /
``--pixel_threshold`` when given, else the calibration stored beside the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from ..data.fewshot import folder_references
from ..engine.calibration import Calibration
from ..engine.detector import AnomalyDetector, Prediction
from ..engine.distributed import gather_in_order, init_distributed, is_main_process, shard_items
from ..engine.flags import add_backbone_arguments, backbone_config_from_args, setup_logging
from ..engine.inference import ImagePrediction, expand_inputs, predict_files
from ..engine.outputs import MAP_FORMATS, PredictionFiles, common_root, write_predictions_csv
from ..engine.references import MemoryBank, predict_with_references
from ..methods import METHODS, get_method, load
from .config import checkpoint_method

logger = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Checkpoint, method and backbone flags shared by ``predict`` and ``calibrate``."""
    parser.add_argument("--checkpoint_path", required=True,
                        help="our checkpoint, or an official one (AnomalyCLIP epoch_15.pth; AA-CLIP folder)")
    parser.add_argument("--method", default=None, choices=sorted(METHODS),
                        help="method of the checkpoint (detected from the file when omitted)")
    parser.add_argument("--class_name", default=None,
                        help="object name for AA-CLIP's text anchors (e.g. 'screw'); AnomalyCLIP ignores it")
    parser.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    add_backbone_arguments(parser)


def load_detector(args: argparse.Namespace, method: str, calibration: Optional[str] = None) -> AnomalyDetector:
    """The checkpoint with the method's and the backbone's flags applied."""
    flags = get_method(method).flags
    return load(args.checkpoint_path, device=args.device, method_config=flags.config_from_args(args, {}),
                configure_backbone=lambda base: backbone_config_from_args(args, base), calibration=calibration)


def build_predict_parser(method: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("anomaly-clip predict", description="Score your own images with a trained model.")
    parser.add_argument("--input", nargs="+", required=True,
                        help="image files, folders (searched recursively) or glob patterns ('parts/**/*.png')")
    parser.add_argument("--save_path", default="./predictions", help="output folder (predictions.csv, maps/, overlays/)")
    add_model_arguments(parser)
    parser.add_argument("--num_workers", type=int, default=2, help="image-reading worker processes")
    parser.add_argument("--image_threshold", type=float, default=None,
                        help="label 1 when score >= this (overrides the stored calibration)")
    parser.add_argument("--pixel_threshold", type=float, default=None,
                        help="predicted mask: map >= this (overrides the stored calibration)")
    parser.add_argument("--calibration", default=None,
                        help="calibration JSON to use instead of <checkpoint>.calibration.json")
    parser.add_argument("--save-maps", dest="save_maps", choices=MAP_FORMATS, default=None,
                        help="write each anomaly map at the image's original resolution (float32 .npz or "
                             "16-bit PNG with its value range in the PNG text)")
    parser.add_argument("--overlays", action="store_true",
                        help="write image | heatmap overlay | predicted-mask outline panels with score and decision")
    parser.add_argument("--map_range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="colour scale of the overlays (default: the calibration's map range)")
    group = parser.add_argument_group("few-shot normal references")
    group.add_argument("--reference_images", default=None, metavar="DIR|FILE",
                       help="normal images of the product (one sub-folder per class, or images of --class_name), "
                            "or a memory bank saved by test.py/predict --save_reference_bank")
    group.add_argument("--reference_weight", type=float, default=0.5, metavar="W",
                       help="map = (1-W) method map + W reference map; score likewise (default 0.5)")
    group.add_argument("--save_reference_bank", default=None, metavar="FILE", help="write the memory bank to FILE")
    get_method(method).flags.add_test_arguments(parser)
    return parser


def reference_scorer(args: argparse.Namespace, detector: AnomalyDetector
                     ) -> Optional[Callable[[torch.Tensor, Optional[List[str]]], Prediction]]:
    """Prediction fused with a memory bank of ``--reference_images`` (built once), or None."""
    if args.reference_images is None:
        if args.save_reference_bank:
            raise ValueError("--save_reference_bank needs --reference_images")
        return None
    if not 0.0 <= args.reference_weight <= 1.0:
        raise ValueError(f"--reference_weight must lie in [0, 1], got {args.reference_weight}")
    if Path(args.reference_images).is_file():
        bank = MemoryBank.load(args.reference_images, detector)
    else:
        bank = MemoryBank.build(detector, folder_references(args.reference_images, args.class_name),
                                batch_size=args.batch_size, num_workers=args.num_workers, precision=args.precision)
    if args.save_reference_bank and is_main_process():
        bank.save(args.save_reference_bank)
    logger.info("Fusing with normal references of %s (weight %g)", ", ".join(bank.class_names), args.reference_weight)
    return lambda images, names: predict_with_references(detector, images, names, bank, args.reference_weight)


def predict_main(argv: Optional[Sequence[str]] = None) -> List[ImagePrediction]:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = checkpoint_method(argv)
    args = build_predict_parser(method).parse_args(argv)
    args.device = init_distributed(args.device)
    setup_logging(args.save_path, "predict_log.txt")
    detector = load_detector(args, method, args.calibration)
    calibration = detector.calibration or Calibration(method=detector.method_name)
    calibration = calibration.with_thresholds(args.image_threshold, args.pixel_threshold, args.map_range)
    class_name = args.class_name or calibration.provenance.get("class_name")
    if class_name and not args.class_name:
        logger.info("Class name %r from the calibration", class_name)
    paths = expand_inputs(args.input)
    logger.info("Scoring %d images with %s (image threshold %s, pixel threshold %s)", len(paths),
                detector.method_name, calibration.image_threshold, calibration.pixel_threshold)
    files = PredictionFiles(args.save_path, common_root(paths), save_maps=args.save_maps, overlays=args.overlays,
                            image_threshold=calibration.image_threshold, pixel_threshold=calibration.pixel_threshold,
                            value_range=calibration.map_range)
    writes_files = args.save_maps is not None or args.overlays
    mine = shard_items(paths, block=args.batch_size)
    rows = predict_files(detector, mine, class_names=[class_name] * len(mine), batch_size=args.batch_size,
                         num_workers=args.num_workers, precision=args.precision, calibration=calibration,
                         sink=files if writes_files else None, keep_originals=files.needs_originals,
                         score_batch=reference_scorer(args, detector))
    rows = gather_in_order(rows, dst=None)
    if not is_main_process():
        return rows
    table = write_predictions_csv(rows, Path(args.save_path) / "predictions.csv")
    settings = {"checkpoint": str(args.checkpoint_path), "method": detector.method_name, "inputs": args.input,
                "class_name": class_name, "calibration": calibration.to_dict(),
                "overlay_colour_range": list(files.value_range) if files.value_range else None,
                "random_init": detector.backbone.config.random_init,
                "references": ({"source": str(args.reference_images), "weight": args.reference_weight}
                               if args.reference_images else None)}
    (Path(args.save_path) / "predict_settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    scored = [row for row in rows if not row.error]
    anomalous = sum(1 for row in scored if row.label == 1)
    logger.info("Wrote %s: %d images scored%s, %d unreadable", table, len(scored),
                f", {anomalous} anomalous" if calibration.image_threshold is not None else " (no threshold: no labels)",
                len(rows) - len(scored))
    return rows
