"""``anomaly-clip calibrate``: decision thresholds for a checkpoint, stored where ``load`` finds them.

From a labelled dataset (``--data_path``, metadata as for ``test``): the F1-max image and pixel
thresholds. From normal images only (``--normal_quantile q``, with ``--data_path`` using its
normal images, or ``--input`` files/folders/globs of good parts): the ``q`` quantile of their
scores and of their maps' maxima (``q = 1``: the maximum), so a fraction ``q`` of them is called
normal with an empty mask. Written to ``<checkpoint>.calibration.json`` unless ``--output``
names another file (then pass it to ``predict --calibration``).

The scores are those ``predict`` computes with the same flags: ``--class_name`` and the normal
references (``--reference_images``, ``--reference_weight``) change their scale, so the
calibration records them and ``predict`` checks that it runs with the same ones.
"""
from __future__ import annotations

import logging
import sys
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

from .common import setup_logging
from .options import CommandParser, UsageError
from .settings import CalibrateSettings, DataSettings, ImageSettings, ReferenceSettings
from .test import checkpoint_command, load_model, model_source, reference_bank, without_references

# the reference flags predict has (calibrate takes the same ones)
REFERENCE_FLAGS = ("reference_images", "reference_weight", "save_reference_bank")

logger = logging.getLogger(__name__)


def build_calibrate_parser() -> CommandParser:
    """The parser of ``calibrate``: model, images (dataset or files), rule, normal references,
    backbone, method flags."""
    skip = [name for name in ReferenceSettings.__dataclass_fields__ if name not in REFERENCE_FLAGS]
    return checkpoint_command("anomaly-clip calibrate", "Find image and pixel thresholds and store them with the "
                              "model.", "calibrate", [(ImageSettings, "model"), (DataSettings, "data"),
                                                      (CalibrateSettings, "calibration"),
                                                      (ReferenceSettings, "few-shot normal references")],
                              data_path=False, skip=skip)


def calibrate_main(argv: Optional[Sequence[str]] = None) -> Any:
    """Parse, run the model over the calibration images, write the calibration; return it."""
    command = build_calibrate_parser()
    args = command.parse(list(sys.argv[1:] if argv is None else argv))
    if (args.data_path is None) == (args.input is None):
        raise UsageError("give either --data_path (a dataset with metadata) or --input (normal images)")
    if args.input is not None and args.normal_quantile is None:
        raise UsageError("--input holds normal images only: F1-max needs labels, so give --normal_quantile")
    from ..data.dataset import AnomalyDataset
    from ..data.formats import load_samples
    from ..devices import resolve_device
    from ..engine.calibration import (calibrate, image_level_samples, note_class_choice, references_record,
                                      sidecar_path)
    from ..engine.inference import collect_outputs, expand_inputs
    from ..engine.references import predict_with_references

    resolve_device(args.device)
    checkpoint = model_source(args)
    if checkpoint is None:
        if not args.output:
            raise UsageError("without --checkpoint_path there is no checkpoint to store the calibration beside: give "
                             "--output FILE (then pass it to predict --calibration FILE)")
    output = Path(args.output) if args.output else sidecar_path(args.checkpoint_path)
    setup_logging(output.parent, "calibrate_log.txt")
    detector = load_model(args, data_path=args.data_path, checkpoint=checkpoint)
    bank = reference_bank(args, detector, args.data_path, args.class_name)
    if args.input is not None:
        note_class_choice(detector, args.class_name)
        root = "/"
        samples = image_level_samples(expand_inputs(args.input), args.class_name)
        source = {"inputs": [str(p) for p in args.input]}
    else:
        root = args.data_path
        samples = load_samples(args.data_path, split=args.split, metadata=args.metadata)
        source = {"data_path": str(args.data_path), "split": args.split, "metadata": args.metadata}
    if bank is not None:  # as test does: a reference scores ~0 against itself
        samples = without_references(samples, root, bank, task="calibration")
    dataset = AnomalyDataset(samples, root, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation,
                             image_level_only=True if args.input is not None else None)
    scorer = partial(predict_with_references, detector, bank=bank, weight=args.reference_weight) if bank else None
    outputs = collect_outputs(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                              precision=args.precision, class_name=args.class_name,
                              keep_maps=args.normal_quantile is None, scorer=scorer)
    references = None
    if bank is not None:
        references = {"source": str(args.reference_images), **references_record(bank.sources, args.reference_weight)}
    calibration = calibrate(detector, outputs, normal_quantile=args.normal_quantile,
                            provenance={"checkpoint": str(args.checkpoint_path) if args.checkpoint_path else None,
                                        "class_name": args.class_name, "references": references,
                                        "precision": args.precision, **source})
    calibration.save(output)
    logger.info("Wrote the calibration to %s%s", output, "" if args.output is None else
                f" (use it with: predict --calibration {output})")
    return calibration
