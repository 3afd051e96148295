"""``anomaly-clip calibrate``: decision thresholds for a checkpoint, stored where ``load`` finds them.

From a labelled dataset (``--data_path``, metadata as for ``test.py``): the F1-max image and pixel
thresholds. From normal images only (``--normal-quantile q``, with ``--data_path`` using its
normal images, or ``--input`` files/folders/globs of good parts): the ``q`` quantile of their
scores and of their maps' maxima (``q = 1``: the maximum), so a fraction ``q`` of them is called
normal with an empty mask. Written to ``<checkpoint>.calibration.json``
unless ``--output`` names another file (then pass it to ``predict --calibration``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..data.dataset import AnomalyDataset
from ..engine.calibration import Calibration, calibrate, collect_outputs, image_level_samples, sidecar_path
from ..engine.flags import add_data_arguments, setup_logging
from ..engine.inference import expand_inputs
from ..methods import get_method
from .config import checkpoint_method
from .predict import add_model_arguments, load_detector


def build_calibrate_parser(method: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser("anomaly-clip calibrate",
                                     description="Find image and pixel thresholds and store them with the model.")
    add_model_arguments(parser)
    add_data_arguments(parser, "--data_path", split_default="test", required=False)
    parser.add_argument("--input", nargs="+", default=None,
                        help="normal images only (files, folders, globs), instead of --data_path; needs "
                             "--normal-quantile")
    parser.add_argument("--normal-quantile", dest="normal_quantile", type=float, default=None,
                        help="thresholds at this quantile of the normal images' scores and map maxima (1 = maximum); "
                             "default: F1-max on a labelled --data_path")
    parser.add_argument("--output", default=None,
                        help="calibration file to write (default: <checkpoint_path>.calibration.json)")
    get_method(method).flags.add_test_arguments(parser)
    return parser


def calibrate_main(argv: Optional[Sequence[str]] = None) -> Calibration:
    argv = list(sys.argv[1:] if argv is None else argv)
    method = checkpoint_method(argv)
    parser = build_calibrate_parser(method)
    args = parser.parse_args(argv)
    if (args.data_path is None) == (args.input is None):
        parser.error("give either --data_path (a dataset with metadata) or --input (normal images)")
    if args.input is not None and args.normal_quantile is None:
        parser.error("--input holds normal images only: F1-max needs labels, so give --normal-quantile")
    output = Path(args.output) if args.output else sidecar_path(args.checkpoint_path)
    setup_logging(output.parent, "calibrate_log.txt")
    detector = load_detector(args, method)
    flags = get_method(method).flags
    if args.input is not None:
        paths = expand_inputs(args.input)
        dataset = AnomalyDataset(image_level_samples(paths, args.class_name), "/", image_size=detector.image_size,
                                 mask_interpolation=detector.mask_interpolation, image_level_only=True)
        source = {"inputs": [str(p) for p in args.input]}
    else:
        dataset = flags.evaluation_dataset(args, detector)
        source = {"data_path": str(args.data_path), "split": args.split, "metadata": args.metadata}
    outputs = collect_outputs(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                              precision=args.precision, class_name=args.class_name,
                              keep_maps=args.normal_quantile is None)
    calibration = calibrate(detector, outputs, normal_quantile=args.normal_quantile,
                            provenance={"checkpoint": str(args.checkpoint_path), "class_name": args.class_name,
                                        **source})
    calibration.save(output)
    return calibration
