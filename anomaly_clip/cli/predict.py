"""``anomaly-clip predict``: score one's own images (files, folders, globs) with a trained model.

Writes ``SAVE_PATH/predictions.csv`` (``path,score,label,error``), and on request maps at each
image's original resolution and overlay panels. Thresholds: ``--image_threshold`` /
``--pixel_threshold`` when given, else the calibration stored beside the checkpoint.
``--backend onnxruntime --model FILE`` scores with a model written by ``anomaly-clip export``
instead of a checkpoint: the same inference path, thresholds from the file's metadata.
"""
from __future__ import annotations

import json
import logging
import sys
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence

from .common import setup_logging
from .export import onnx_model_command, predict_backend
from .options import CommandParser, dataclass_flags
from .settings import ImageSettings, PredictSettings, ReferenceSettings
from .test import checkpoint_command, load_model, model_source, reference_bank

logger = logging.getLogger(__name__)

PREDICT_REFERENCE_FLAGS = ("reference_images", "reference_weight", "save_reference_bank")


def build_predict_parser(backend: str = "torch") -> CommandParser:
    """The parser of ``predict``: inputs and outputs, model, thresholds, normal references, backbone;
    with ``backend="onnxruntime"`` the exported file replaces the checkpoint, backbone, method and
    reference flags (the graph fixes them)."""
    if backend == "onnxruntime":
        command = onnx_model_command()
    else:
        skip = [f for f in ReferenceSettings.__dataclass_fields__ if f not in PREDICT_REFERENCE_FLAGS]
        command = checkpoint_command("anomaly-clip predict", "Score your own images with a trained model.", "predict",
                                     [(ImageSettings, "model"), (ReferenceSettings, "few-shot normal references")],
                                     skip=skip)
    flags = dataclass_flags(PredictSettings, "predict")
    flags[0].kwargs.update(required=True, nargs="+")
    command.add_flags(flags, "predict")
    return command


def predict_main(argv: Optional[Sequence[str]] = None) -> List:
    """Parse, score every input, write ``predictions.csv`` (and maps/overlays); return the rows."""
    argv = list(sys.argv[1:] if argv is None else argv)
    backend = predict_backend(argv, PREDICT_REFERENCE_FLAGS)
    args = build_predict_parser(backend).parse(argv)
    onnx = backend == "onnxruntime"
    from ..engine.calibration import (Calibration, check_inference_settings, note_class_choice, references_record,
                                      sidecar_path)
    from ..engine.distributed import gather_in_order, init_distributed, is_main_process, shard_items
    from ..engine.inference import expand_inputs, predict_files
    from ..engine.outputs import (OutputWriter, PredictionFiles, common_root, format_size, random_weights_mark,
                                  write_predictions_csv, writer_threads)
    from ..engine.references import predict_with_references
    from ..engine.visualization import ColourScale
    from ..files import atomic_path

    checkpoint = None if onnx else model_source(args)
    args.device = init_distributed(args.device, timeout=args.dist_timeout)
    setup_logging(args.save_path, "predict_log.txt")
    if onnx:
        from ..engine.export import load_onnx

        detector = load_onnx(args.model, device=args.device, calibration=args.calibration, threads=args.threads)
    else:
        detector = load_model(args, calibration=args.calibration, checkpoint=checkpoint)
    exported_class = detector.metadata.class_name if onnx else None
    class_name = (args.class_name or exported_class
                  or (detector.calibration.class_name if detector.calibration else None))
    if class_name and not args.class_name:
        logger.info("Class name %r from the %s", class_name, "exported model" if exported_class else "calibration")
    calibration = detector.calibration
    bank = references = None
    if not onnx:  # an exported graph fixes its class, size and (no) references; load_onnx checked its calibration
        note_class_choice(detector, class_name)
        bank = reference_bank(args, detector, None, args.class_name)
        references = references_record(bank.sources, args.reference_weight) if bank is not None else None
        stored = str(sidecar_path(args.checkpoint_path)) if args.checkpoint_path else None
        calibration = check_inference_settings(detector, calibration, args.calibration or stored, class_name,
                                               references, required=args.calibration is not None)
        if bank is not None and detector.few_shot_score_needs_calibration and not (
                calibration and calibration.score_statistics):
            logger.warning("%s's few-shot image score needs the score statistics of a calibration made with these "
                           "normal references (anomaly-clip calibrate with the same --reference_images and "
                           "--reference_weight): without one, the image score is the zero-shot text probability, "
                           "unchanged by the references (the maps do fuse them)", detector.method_name)
    calibration = calibration or Calibration(method=detector.method_name)
    calibration = calibration.with_thresholds(args.image_threshold, args.pixel_threshold, args.map_range)
    paths = expand_inputs(args.input)
    logger.info("Scoring %d images with %s (image threshold %s, pixel threshold %s)", len(paths),
                detector.method_name, calibration.image_threshold, calibration.pixel_threshold)
    random_init = detector.random_init if onnx else detector.backbone.config.random_init
    scale = ColourScale(calibration.map_range, "--map_range" if args.map_range else "calibration")
    scorer = None
    if bank is not None:
        logger.info("Fusing with normal references of %s (weight %g)", ", ".join(bank.class_names),
                    args.reference_weight)
        scorer = partial(predict_with_references, detector, bank=bank, weight=args.reference_weight)
    mine = shard_items(paths, block=args.batch_size)
    with OutputWriter(writer_threads(detector.device)) as writer:
        files = PredictionFiles(args.save_path, common_root(paths), writer, save_maps=args.save_maps,
                                overlays=args.overlays, image_threshold=calibration.image_threshold,
                                pixel_threshold=calibration.pixel_threshold, scale=scale, map_dtype=args.map_dtype,
                                overlay_format=args.overlay_format, random_weights=random_init)
        rows = predict_files(detector, mine, class_names=[class_name] * len(mine), batch_size=args.batch_size,
                             num_workers=args.num_workers, precision=args.get("precision", "fp32"),
                             calibration=calibration, sink=files if files.writes_files else None,
                             keep_originals=files.needs_originals, scorer=scorer)
        rows = gather_in_order(rows, dst=None)
        written = writer.close()
    if not is_main_process():
        written.raise_for_failures()
        return rows
    table = write_predictions_csv(rows, Path(args.save_path) / "predictions.csv",
                                  warning=random_weights_mark(random_init))
    source = {"model": str(args.model)} if onnx else {
        "checkpoint": str(args.checkpoint_path) if args.checkpoint_path else None}
    settings = {"backend": backend, **source, "method": detector.method_name, "inputs": list(args.input),
                "class_name": class_name, "calibration": calibration.to_dict(),
                "overlay_colour_range": list(scale.value_range) if scale.value_range else None,
                "overlay_colour_range_source": scale.source if scale.value_range else None,
                "random_init": random_init,
                "references": ({"source": str(args.reference_images), **references} if references else None),
                "output_failures": [f"{path}: {reason}" for path, reason in written.failures]}
    settings_file = Path(args.save_path) / "predict_settings.json"
    with atomic_path(settings_file) as temporary:
        temporary.write_text(json.dumps(settings, indent=2) + "\n")
    scored = [row for row in rows if not row.error]
    anomalous = sum(1 for row in scored if row.label == 1)
    logger.info("Wrote %s: %d images scored%s, %d unreadable or not scored", table, len(scored),
                f", {anomalous} anomalous" if calibration.image_threshold is not None else " (no threshold: no labels)",
                len(rows) - len(scored))
    size = table.stat().st_size + settings_file.stat().st_size + written.bytes
    kinds = [name for name, wanted in (("maps", args.save_maps), ("overlays", args.overlays)) if wanted]
    logger.info("Output: %s in %s%s", format_size(size), args.save_path,
                f" ({', '.join(kinds)}: {written.describe()})" if kinds else "")
    if not scored:
        raise ValueError(f"no image was scored: all {len(rows)} failed (the error column of {table} says why)")
    written.raise_for_failures()
    return rows
