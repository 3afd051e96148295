"""``anomaly-clip export``: a trained model as one ONNX graph, for ONNX Runtime on a line PC or an edge box.

Writes ``--output`` (the detector's ``forward``: ``images (B, 3, S, S) -> scores (B,), maps (B, S, S)``,
B dynamic) with the method, image size, normalisation, class, calibration and the weights'
fingerprint in its metadata, after ``onnx.checker`` accepted it and ONNX Runtime reproduced
PyTorch on random images. ``anomaly-clip predict --backend onnxruntime --model FILE`` runs it.
The model is loaded on the CPU unless ``--device`` says otherwise. See ``docs/export.md``.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .common import add_backbone_flags, add_method_flags, setup_logging
from .options import CommandParser, UsageError, dataclass_flags, section_values, spellings
from .settings import ExportSettings, ImageSettings, OnnxModelSettings, RunSettings
from .test import add_model_flags, load_model, model_source

logger = logging.getLogger(__name__)

# the exporter's own passes log every rewrite at INFO
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")


def build_export_parser() -> CommandParser:
    """The parser of ``export``: model, output file and class, backbone (``--image_size``), method flags."""
    command = CommandParser("anomaly-clip export", "Write a trained model as one ONNX graph for ONNX Runtime.",
                            "export")
    add_model_flags(command)
    flags = dataclass_flags(ExportSettings, "export")
    flags[0].kwargs["required"] = True
    command.add_flags(flags, "export")
    add_backbone_flags(command, num_workers=False, precision=False)
    command.parser.set_defaults(device="cpu")
    add_method_flags(command)
    return command


def export_main(argv: Optional[Sequence[str]] = None) -> Any:
    """Parse, check that the checkpoint's method (or the training-free ``--method`` given without a
    checkpoint) is exportable before the model is built, load it, export; return the
    :class:`~anomaly_clip.engine.export.ExportResult`."""
    args = build_export_parser().parse(list(sys.argv[1:] if argv is None else argv))
    from ..engine.calibration import check_inference_settings, sidecar_path
    from ..engine.export import check_exportable, export_onnx
    from ..extras import require

    setup_logging()
    for name in EXPORTER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if Path(args.output).is_dir():  # before minutes of export work
        raise UsageError(f"--output {args.output} is a folder, where a file is needed: give a file name")
    checkpoint = model_source(args)
    check_exportable(checkpoint.method if checkpoint is not None else args.method)
    require("export")
    detector = load_model(args, calibration=args.calibration, checkpoint=checkpoint)
    class_name = args.class_name
    if class_name is None and detector.calibration is not None:
        class_name = detector.calibration.provenance.get("class_name") or None
    # the graph scores without normal references, at the export's size and class: a calibration made
    # otherwise is refused when asked for, left out with a warning when only found beside the checkpoint
    source = args.calibration or (str(sidecar_path(args.checkpoint_path)) if args.checkpoint_path else "given")
    detector.calibration = check_inference_settings(detector, detector.calibration, source, class_name, None,
                                                    required=args.calibration is not None)
    if detector.calibration is None:
        class_name = args.class_name
    elif class_name and not args.class_name:
        logger.info("Class name %r from the calibration", class_name)
    return export_onnx(detector, args.output, class_name=class_name, half=args.half)


# ---- predict --backend onnxruntime ----------------------------------------------------------------
def onnx_model_command() -> CommandParser:
    """``predict``'s parser for an exported file: ``--model FILE``, the class and batch of the
    images, device, workers, ONNX Runtime's threads (``predict`` adds its input/output flags)."""
    command = CommandParser("anomaly-clip predict", "Score your own images with a model written by 'anomaly-clip "
                            "export', on ONNX Runtime.", "predict")
    flags = dataclass_flags(OnnxModelSettings, "model")
    flags[0].kwargs["required"] = True
    flags += dataclass_flags(ImageSettings, "model") + dataclass_flags(RunSettings, "model", skip=("precision",))
    command.add_flags(flags, "model")
    return command


def flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    """The last value given to flag ``name`` (either spelling, ``--flag VALUE`` or ``--flag=VALUE``)."""
    names, value = spellings(name), None
    for index, arg in enumerate(argv):
        flag, equals, given = arg.partition("=")
        if flag in names:
            value = given if equals else (argv[index + 1] if index + 1 < len(argv) else None)
    return value


def predict_backend(argv: Sequence[str], reference_flags: Sequence[str]) -> str:
    """``predict``'s ``--backend`` (else its ``--config`` file's, else torch), checked in one line
    each against the rest of the command line: normal references (``reference_flags``) need the
    PyTorch detector's patch features, and an ONNX file needs ``--backend onnxruntime``."""
    backend, config = flag_value(argv, "backend"), flag_value(argv, "config")
    if backend is None and config is not None:
        backend = section_values(config, "predict").get("backend")
    backend = backend or "torch"
    if backend == "onnxruntime":
        given = [name for name in reference_flags if any(arg.partition("=")[0] in spellings(name) for arg in argv)]
        if given:
            raise UsageError(f"--{given[0]} needs the detector's patch features, which an exported ONNX graph does "
                             "not output: use --backend torch --checkpoint_path CKPT for normal references")
    elif any(str(flag_value(argv, name) or "").endswith(".onnx") for name in ("model", "model_name", "checkpoint_path")):
        raise UsageError("an ONNX model runs with --backend onnxruntime --model FILE.onnx")
    return backend
