"""``train.py`` / ``anomaly-clip train``: train any registered method from flags or a config file."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..engine.config import TrainConfig
from ..engine.registry import find_method
from .common import (METHOD_HELP, add_backbone_flags, add_method_flags, backbone_config, check_method_flags,
                     data_path_flag, method_config_values, method_names, plain_settings, program_name, setup_logging,
                     training_settings)
from .options import (CommandParser, UsageError, config_source, dataclass_flags, read_config_file,
                      write_resolved_config)
from .settings import DataSettings, PseudoAnomalySettings

logger = logging.getLogger(__name__)


def requested_method(argv: Sequence[str]) -> Optional[str]:
    """The method a ``train`` command line asks for before it is parsed: ``--method``, else the
    ``method`` of its last ``--config`` file (None: the default method, or a problem the parser
    reports)."""
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg == "--method" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--method="):
            return arg.split("=", 1)[1]
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    files += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    for file in reversed(files):
        if Path(file).is_file():
            try:
                method = read_config_file(file).get("method")
            except UsageError:
                return None
            return method if isinstance(method, str) else None
    return None


def build_train_parser(method: Optional[str] = None, only: bool = False) -> CommandParser:
    """The parser of ``train``: run, data, pseudo-anomaly, backbone and every method's flags
    (``only``: ``method``'s alone, for ``--method NAME --help``); shared training settings
    (``--epoch``) default to those of ``method`` (default: the first method)."""
    names = method_names()
    if method is not None and method not in names:
        try:
            method = find_method(method).name
        except KeyError:
            method = None  # the parser names the valid choices
    only = only and method is not None
    description = "Train a method's prompts/adapters on a dataset. " + (
        f"Flags of {method} only ('--help' without --method lists every method's)." if only else
        METHOD_HELP.format(prog=program_name("train", "train.py"), names=", ".join(names)))
    command = CommandParser(program_name("train", "train.py"), description, "train")
    command.add_argument("--method", title="run", default=None, choices=names,
                         help=f"method to train (default: the --init_checkpoint's, else {names[0]}); "
                              "its own flags: `train.py --method NAME --help`")
    command.add_flags(dataclass_flags(TrainConfig, "run"), "run")
    command.add_argument("--no-export-official", title="run", dest="export_official", action="store_false",
                         default=TrainConfig().export_official,
                         help="do not also write checkpoints in the official code's format")
    data_path_flag(command, "train_data_path", required=True)
    command.add_flags(dataclass_flags(DataSettings, "data"), "data")
    command.add_flags(dataclass_flags(PseudoAnomalySettings, "pseudo-anomalies (training on normal images)"),
                      "pseudo-anomalies (training on normal images)")
    add_backbone_flags(command, num_workers=False)
    add_method_flags(command, training=True, first=method or names[0], only=method if only else None)
    return command


def train_main(argv: Optional[Sequence[str]] = None) -> Path:
    """Parse, train, and return the checkpoint of the finished model."""
    argv = list(sys.argv[1:] if argv is None else argv)
    requested = requested_method(argv)
    command = build_train_parser(requested, only=bool({"-h", "--help"} & set(argv)))
    args = command.parse(argv)
    from .. import api
    from ..clip.config import BackboneConfig
    from ..data.pseudo_anomaly import PSEUDO_DEFECT_TYPES, PseudoAnomalies
    from ..engine.checkpoint import identify_checkpoint, other_method_error
    from ..engine.distributed import init_distributed, is_main_process
    from ..engine.training import TrainingData, seed_everything, training_lock

    start = identify_checkpoint(args.init_checkpoint) if args.init_checkpoint else None
    args.method = args.method or (start.method if start is not None else method_names()[0])
    method = find_method(args.method)
    if start is not None and start.method != method.name:
        raise other_method_error(args.init_checkpoint, start.method, method.name)
    if method.training_free:
        raise UsageError(f"{method.name} is training-free: evaluate it directly with test.py --method {method.name} "
                         "(no checkpoint needed)")
    if requested is None and method.name != method_names()[0]:
        args = build_train_parser(method.name).parse(argv)  # shared settings default to the checkpoint's method
        args.method = method.name
    check_method_flags(args, method, training=True)
    if args.synthesize_defects and not args.synthesize_anomalies:
        raise ValueError("--synthesize_defects needs --synthesize_anomalies P with P > 0")
    settings = plain_settings(args)
    config = TrainConfig(**{name: args[name] for name in TrainConfig.__dataclass_fields__
                            if name in args and name not in ("method", "run_settings")},
                         method=training_settings(args, method), run_settings=settings)
    # a checkpoint to start from gives the backbone and the architecture (flags override them)
    base_backbone, base_values = method.detector_class.default_backbone_config(), None
    if start is not None and start.own:
        base_backbone = BackboneConfig.from_dict(start.payload["backbone_config"])
        base_values = start.payload.get("method_config")
    backbone_settings = backbone_config(args, base_backbone)
    args.device = init_distributed(args.device, timeout=args.dist_timeout)
    setup_logging(args.save_path, "log.txt")
    with training_lock(args.save_path):
        if is_main_process():
            write_resolved_config(settings, "train", args.save_path, source=config_source(args))
        if base_values is not None:
            logger.info("Backbone and %s settings from %s (flags given here override them)", method.name,
                        args.init_checkpoint)
        pseudo = None
        if args.synthesize_anomalies:
            pseudo = PseudoAnomalies(args.synthesize_anomalies,
                                     tuple(args.synthesize_defects or PSEUDO_DEFECT_TYPES), seed=args.seed)
        seed_everything(config.seed)
        backbone = api.load_backbone(backbone_settings, device=args.device)
        values = method_config_values(args, method, base=base_values, data_path=args.train_data_path)
        detector = api.create_detector(method.name, backbone=backbone, config=values)
        data = TrainingData.from_folder(args.train_data_path, split=args.split, metadata=args.metadata,
                                        pseudo_anomalies=pseudo)
        logger.info("Training %s on %s (%s split, %d images): %s / %s", method.name, args.train_data_path,
                    args.split, len(data.samples), json.dumps(detector.config.to_dict()),
                    json.dumps(config.method.__dict__, default=str))
        result = api.fit(detector, data, config)
    logger.info("Training finished; last checkpoint: %s", result.final_checkpoint)
    return result.final_checkpoint
