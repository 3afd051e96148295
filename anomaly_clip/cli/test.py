"""``test.py`` / ``anomaly-clip test``: evaluate a checkpoint (ours or official) on a dataset."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

from .common import (add_backbone_flags, add_method_flags, backbone_config, check_method_flags, data_path_flag,
                     method_config_values, method_names, plain_settings, program_name, setup_logging)
from .options import CommandParser, UsageError, config_source, dataclass_flags, read_config_file, write_resolved_config
from .settings import DataSettings, EvaluationSettings, ModelSettings, ReferenceSettings

logger = logging.getLogger(__name__)


def add_model_flags(command: CommandParser) -> None:
    """``--checkpoint_path`` (required unless ``--method`` is training-free) and ``--method``
    (checked against the file)."""
    command.add_argument("--checkpoint_path", title="model", default=None,
                         help=ModelSettings.__dataclass_fields__["checkpoint_path"].metadata["help"])
    command.add_argument("--method", title="model", default=None, choices=method_names(),
                         help=ModelSettings.__dataclass_fields__["method"].metadata["help"])


def checkpoint_command(prog: str, description: str, section: str, groups: Sequence[Tuple[type, str]],
                       data_path: Optional[bool] = None, skip: Sequence[str] = ()) -> CommandParser:
    """The parser of a command that reads a checkpoint: model flags, ``groups`` (settings class,
    title), the dataset root (required, optional, or none: ``data_path`` True/False/None),
    backbone and every method's flags; fields named in ``skip`` are left out."""
    command = CommandParser(prog, description, section)
    add_model_flags(command)
    for cls, title in groups:
        if cls is DataSettings and data_path is not None:
            data_path_flag(command, "data_path", required=data_path)
        command.add_flags(dataclass_flags(cls, title, skip=skip), title)
    add_backbone_flags(command)
    add_method_flags(command)
    return command


def build_test_parser() -> CommandParser:
    """The parser of ``test``: model, evaluation, data, normal references, backbone, method flags."""
    return checkpoint_command(program_name("test", "test.py"), "Evaluate a trained detector on a dataset.", "test",
                              [(EvaluationSettings, "evaluation"), (DataSettings, "data"),
                               (ReferenceSettings, "few-shot normal references")], data_path=True)


def training_free_method(args):
    """The training-free ``--method`` a command without ``--checkpoint_path`` runs; a trained
    method, or no method at all, is a :class:`UsageError` saying what to give. Commands call it
    before they write anything."""
    from ..engine.registry import find_method, registered_methods

    free = ", ".join(m.name for m in registered_methods() if m.training_free)
    if not args.method:
        raise UsageError(f"--checkpoint_path is required (training-free methods need only --method: {free})")
    method = find_method(args.method)
    if not method.training_free:
        raise UsageError(f"--checkpoint_path is required: {method.name} has learnt parts (training-free methods: "
                         f"{free})")
    check_method_flags(args, method)
    return method


def model_source(args):
    """What a checkpoint-reading command scores with, checked before it writes anything: the
    ``--checkpoint_path`` read once (a :class:`~anomaly_clip.engine.checkpoint.CheckpointFile`;
    missing, unreadable or unsafe files raise here), or None for a training-free ``--method``
    (:func:`training_free_method`)."""
    from ..engine.checkpoint import identify_checkpoint

    if not args.get("checkpoint_path"):
        training_free_method(args)
        return None
    return identify_checkpoint(args.checkpoint_path)


def training_free_model(args, calibration: Optional[str] = None, data_path: Optional[str] = None):
    """A detector of the training-free ``--method`` (:func:`training_free_method`): the method's
    defaults (or the backbone a ``calibration`` file was made with, as a checkpoint carries its
    own) with its backbone and method flags applied."""
    from .. import api
    from ..clip.config import BackboneConfig
    from ..engine.calibration import Calibration, attach_calibration

    method = training_free_method(args)
    base = method.detector_class.default_backbone_config()
    recorded = Calibration.read(calibration).provenance.get("backbone_config") if calibration is not None else None
    if recorded:
        base = BackboneConfig.from_dict(recorded)
        logger.info("Backbone settings from the calibration %s (flags given here override them)", calibration)
    backbone = api.load_backbone(backbone_config(args, base), device=args.device)
    detector = api.create_detector(method.name, backbone=backbone,
                                   config=method_config_values(args, method, data_path=data_path))
    if calibration is not None:
        attach_calibration(detector, calibration)
    return detector


def load_model(args, method_name: Optional[str] = None, calibration: Optional[str] = None,
               data_path: Optional[str] = None, checkpoint=None):
    """The checkpoint of ``--checkpoint_path`` (read once: pass the ``CheckpointFile`` when the
    caller has read it) with the method and backbone flags applied; without a checkpoint, the
    training-free ``--method`` (:func:`training_free_model`)."""
    from ..engine.checkpoint import identify_checkpoint, load
    from ..engine.registry import find_method

    if checkpoint is None and not args.get("checkpoint_path"):
        return training_free_model(args, calibration, data_path)
    checkpoint = checkpoint or identify_checkpoint(args.checkpoint_path)
    method = find_method(checkpoint.method)
    if args.method and find_method(args.method).name != method.name:
        raise ValueError(f"--method {args.method}, but {args.checkpoint_path} holds a model of {method.name}: drop "
                         f"--method (the file says which method it is) or give a checkpoint of {args.method}")
    check_method_flags(args, method)
    return load(checkpoint, device=args.device, method_config=method_config_values(args, method, data_path=data_path),
                configure_backbone=lambda base: backbone_config(args, base), calibration=calibration)


def reference_bank(args, detector, data_path: Optional[str], class_name: Optional[str]):
    """The memory bank of ``--reference_images`` (built once, or loaded), None without it."""
    from ..data.formats import MetadataError
    from ..engine.references import memory_bank, reference_count

    source = args.get("reference_images")
    if source is None:
        for flag in ("reference_class", "save_reference_bank"):
            if args.get(flag):
                raise ValueError(f"--{flag} needs --reference_images")
        return None
    if not 0.0 <= args.reference_weight <= 1.0:
        raise ValueError(f"--reference_weight must lie in [0, 1], got {args.reference_weight}")
    defaults = ReferenceSettings()
    split, seed = args.get("reference_split"), args.get("reference_seed")
    split = defaults.reference_split if split is None else split
    try:
        bank = memory_bank(detector, source, data_path=data_path, class_name=class_name, split=split,
                           seed=defaults.reference_seed if seed is None else seed, batch_size=args.batch_size,
                           num_workers=args.num_workers, precision=args.precision)
    except MetadataError as error:
        if reference_count(source) is None:
            raise
        raise MetadataError(
            f"--reference_images {source} takes {source} normal images per class from the {split!r} split of "
            f"{data_path}, but {error}. Name another split with --reference_split (e.g. --reference_split test: "
            f"the references are then left out of the evaluated images), or give a folder of normal images: "
            f"--reference_images DIR (one sub-folder per class, or --reference_class NAME)") from error
    from ..engine.distributed import is_main_process

    if args.save_reference_bank and is_main_process():
        bank.save(args.save_reference_bank)
    return bank


def without_references(samples: list, root: str, bank, task: str = "evaluation") -> list:
    """``samples`` less the images the memory ``bank`` was built from, with a warning naming how
    many: a reference matches itself exactly, so its map would be ~0 and its score meaningless.
    ``task``: ``evaluation`` (``test``) or ``calibration`` (``calibrate``), as the messages say;
    ``ValueError`` when nothing is left."""
    used = {str(Path(path).resolve()) for paths in bank.sources.values() for path in paths}
    kept = [sample for sample in samples if str((Path(root) / sample.image_path).resolve()) not in used]
    images = "evaluated images" if task == "evaluation" else f"{task} images"
    if not kept:
        raise ValueError(f"every one of the {len(samples)} {images} is a normal reference of the memory bank: nothing "
                         f"is left for the {task}; use other images, or other normal references")
    if len(kept) < len(samples):
        logger.warning("%d of the %s are normal references of the memory bank (%s): they are left out of the %s, "
                       "which covers the other %d images", len(samples) - len(kept), images,
                       ", ".join(f"{len(paths)} of {name}" for name, paths in bank.sources.items()), task, len(kept))
    return kept


def same_folder(first: str, second: str) -> bool:
    """Whether two paths name the same existing folder."""
    try:
        return Path(first).resolve() == Path(second).resolve() or os.path.samefile(first, second)
    except OSError:
        return False


def warn_if_trained_on(checkpoint, data_path: str, split: str, metadata: Optional[str]) -> None:
    """Warn when the data evaluated is the data the checkpoint was trained on (as its run
    settings record: dataset root, split, metadata file): its numbers then measure fitting, not
    the zero-shot transfer the protocols report."""
    settings = checkpoint.payload.get("run_settings") or {} if checkpoint.own else {}
    trained = settings.get("train_data_path")
    if not trained or not same_folder(str(trained), data_path):
        return
    if settings.get("split", "test") == split and settings.get("metadata") == metadata:
        logger.warning("%s was trained on the very images evaluated here (%s, split %r): these numbers measure "
                       "fitting, not zero-shot transfer; evaluate on another dataset or split (--split)",
                       checkpoint.path, data_path, split)


def test_main(argv: Optional[Sequence[str]] = None) -> dict:
    """Parse, evaluate, write ``results.json``/``results.csv``; return the report and settings."""
    command = build_test_parser()
    args = command.parse(list(sys.argv[1:] if argv is None else argv))
    from ..data.dataset import AnomalyDataset
    from ..data.formats import load_samples
    from ..engine.distributed import init_distributed, is_main_process
    from ..engine.evaluation import evaluate
    from ..engine.outputs import OutputWriter, writer_threads

    checkpoint = model_source(args)
    args.device = init_distributed(args.device, timeout=args.dist_timeout)
    setup_logging(args.save_path, "test_log.txt")
    if is_main_process():
        write_resolved_config(plain_settings(args), "test", args.save_path, source=config_source(args))
    detector = load_model(args, data_path=args.data_path, checkpoint=checkpoint)
    if checkpoint is not None:
        warn_if_trained_on(checkpoint, args.data_path, args.split, args.metadata)
    samples = load_samples(args.data_path, split=args.split, metadata=args.metadata)
    bank = reference_bank(args, detector, args.data_path, args.reference_class)
    if bank is not None:
        samples = without_references(samples, args.data_path, bank)
    dataset = AnomalyDataset(samples, args.data_path, image_size=detector.image_size,
                             mask_interpolation=detector.mask_interpolation)
    with OutputWriter(writer_threads(detector.device)) as writer:
        report = evaluate(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                          metrics=args.metrics, aupro=args.aupro, precision=args.precision,
                          save_predictions=args.save_predictions,
                          visualize=Path(args.save_path) / "heatmaps" if args.visualize else None,
                          references=bank, reference_weight=args.reference_weight, writer=writer,
                          overlay_format=args.overlay_format)
        settings = evaluation_settings(args, detector, bank)
        logger.info("Results on %s:\n%s", settings["dataset"], report.to_markdown())
        if is_main_process():
            report.save(args.save_path, settings)
        written = writer.close()
    if written.files or written.failures:
        logger.info("Predictions and panels: %s", written.describe())
    written.raise_for_failures()
    return {"report": report, "settings": settings}


def evaluation_settings(args, detector, bank) -> dict:
    """What ``results.json`` records of a test run: model, data, metrics, references, config file."""
    settings = {
        "method": detector.method_name, "dataset": args.dataset or Path(args.data_path).name,
        "checkpoint": str(args.checkpoint_path) if args.checkpoint_path else None,
        "method_config": detector.config.to_dict(),
        "backbone_config": detector.backbone.config.to_dict(), "metrics": args.metrics, "aupro": args.aupro,
    }
    if bank is not None:
        settings["references"] = {"source": str(args.reference_images), "weight": args.reference_weight,
                                  "images_per_class": {name: len(paths) for name, paths in bank.sources.items()}}
    source = config_source(args)
    if source:
        settings["config"] = source
        content = read_config_file(source)
        published = content.get("published") or content.get("reference")
        if published:
            settings["published_reference"] = published
    return settings
