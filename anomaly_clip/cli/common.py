"""Flag groups the sub-commands share, and their translation into library settings.

Method flags are the union of every registered method's config fields (their defaults None:
"keep the checkpoint's or the method's value"); a flag that belongs only to other methods than
the one run is an error. Imports no torch: ``--help`` of every sub-command answers without it.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

from jsonargparse import Namespace

from ..clip.config import BackboneConfig
from ..engine.registry import Method, find_method, registered_methods
from .options import CommandParser, Flag, UsageError, dataclass_flags
from .settings import RunSettings, TinySettings

BACKBONE_GROUP = "backbone"
TINY_CONFLICTS = ("weights_path", "pretrained", "model_name", "cache_dir")
# what --tiny sets in place of a config file's values (a protocol's ViT-L at 518 px becomes the tiny backbone at 112 px)
TINY_REPLACES = TINY_CONFLICTS + ("image_size", "random_init")


def add_backbone_flags(command: CommandParser, num_workers: bool = True, precision: bool = True) -> None:
    """The backbone's settings (defaults: the method's or the checkpoint's), the tiny preset,
    network use, device (and the data loading workers and the autocast precision, unless the
    command has no use for them)."""
    command.add_flags(dataclass_flags(TinySettings, BACKBONE_GROUP), BACKBONE_GROUP)
    command.add_flags(dataclass_flags(BackboneConfig, BACKBONE_GROUP, none_defaults=True), BACKBONE_GROUP)
    command.add_preset("tiny", TINY_REPLACES)
    group = command.group(BACKBONE_GROUP)
    network = group.add_mutually_exclusive_group()
    network.add_argument("--offline", dest="download", action="store_false", default=None,
                         help="never download weights; use local files/cache only")
    network.add_argument("--download", dest="download", action="store_true", default=None,
                         help="download uncached pretrained weights even if the quick connection check fails "
                              "(default: download only when the hub answers)")
    command.table.flags["download"] = Flag("download", ["--offline", "--download"],
                                           {"action": "store_true", "default": None}, BACKBONE_GROUP)
    skip = tuple(name for name, wanted in (("num_workers", num_workers), ("precision", precision)) if not wanted)
    command.add_flags(dataclass_flags(RunSettings, BACKBONE_GROUP, skip=skip), BACKBONE_GROUP)


def _method_title(method: Method) -> str:
    return f"{method.name} ({method.description})" if method.description else method.name


def _owners(kind: str) -> Dict[str, List[str]]:
    owners: Dict[str, List[str]] = {}
    for method in registered_methods():
        cls = method.config_class if kind == "config" else method.training_config_class
        if cls is None:
            continue
        for item in fields(cls):
            if item.metadata.get("flag", True):
                owners.setdefault(item.name, []).append(method.name)
    return owners


def add_method_flags(command: CommandParser, training: bool = False, first: Optional[str] = None,
                     only: Optional[str] = None) -> None:
    """Every registered method's settings, grouped by method (shared fields appear once); with
    ``only``, that method's alone (``--method NAME --help``). Method ``first`` comes first: a
    training setting several methods share (``--epoch``) then defaults to that method's value
    (APRIL-GAN trains 3 epochs, AnomalyCLIP 15)."""
    methods = registered_methods()
    if first is not None:
        chosen = find_method(first)
        methods = [chosen] + [method for method in methods if method.name != chosen.name]
    for kind in ("config", "training") if training else ("config",):
        owners = _owners(kind)
        everyone = {method.name for method in methods}
        for method in methods:
            cls = method.config_class if kind == "config" else method.training_config_class
            if cls is None or (only is not None and method.name != only):
                continue
            flags = dataclass_flags(cls, method.name, none_defaults=kind == "config")
            for flag in flags:
                users = owners.get(flag.dest, [])
                if set(users) != everyone:
                    flag.kwargs["help"] = f"{flag.kwargs['help'].rstrip()} [{', '.join(users)}]"
            command.add_flags(flags, _method_title(method))


METHOD_HELP = ("Flags of every method are listed, each group under its method's name; '{prog} --method NAME "
               "--help' lists only NAME's (methods: {names}).")


def _field_names(method: Method, training: bool) -> set:
    classes = [method.config_class] + ([method.training_config_class] if training else [])
    return {item.name for cls in classes if cls is not None for item in fields(cls)}


def check_method_flags(namespace: Namespace, method: Method, training: bool = False) -> None:
    """A method flag set (not at its default) that ``method`` has in neither its config nor
    (when ``training``) its training settings is an error naming the methods that have it."""
    own = _field_names(method, training)
    for kind in ("config", "training") if training else ("config",):
        for dest, users in _owners(kind).items():
            if dest in own or dest not in namespace:
                continue
            owner = find_method(users[0])
            cls = owner.config_class if kind == "config" else owner.training_config_class
            item = next(f for f in fields(cls) if f.name == dest)
            default = None if kind == "config" else item.default
            value = namespace[dest]
            if value is not None and value != default and not (isinstance(default, tuple) and list(default) == value):
                raise UsageError(f"--{dest} is a setting of {', '.join(users)}, not of {method.name}")


def backbone_config(namespace: Namespace, base: BackboneConfig) -> BackboneConfig:
    """``base`` (the method's defaults or a checkpoint's) updated by the backbone flags given;
    ``--tiny`` first puts ``base`` on the tiny random backbone (other flags, e.g. ``--image_size``,
    still apply; flags naming weights or another model are a conflict); ``--random_init`` with
    ``--weights_path`` is a :class:`UsageError` (which one was meant?)."""
    if namespace.get("weights_path") and namespace.get("random_init"):
        raise UsageError(f"--random_init and --weights_path {namespace.weights_path} contradict each other: give "
                         "--weights_path for trained CLIP weights, or --random_init alone for an untrained backbone")
    if namespace.get("tiny"):
        given = [name for name in TINY_CONFLICTS if namespace.get(name) is not None]
        if given:
            raise UsageError(f"--tiny builds the tiny random backbone, which --{given[0]} contradicts: drop one of "
                             "them")
        base = base.tiny()
    values = {item.name: namespace.get(item.name) for item in fields(BackboneConfig)
              if item.metadata.get("flag", True) and item.name not in ("weights_path", "random_init")}
    config = base.with_updates(**values)
    if namespace.get("weights_path"):
        config = replace(config, weights_path=namespace.weights_path, random_init=False)
    if namespace.get("random_init"):
        config = replace(config, random_init=True, weights_path=None)
    if namespace.get("download") is not None:
        config = replace(config, download=namespace.download)
    return config


def method_config_values(namespace: Namespace, method: Method, base: Optional[dict] = None,
                         data_path: Optional[str] = None) -> Dict[str, Any]:
    """Method-config values of ``base`` updated by the method flags given (None flags leave it)."""
    values = dict(base or {})
    names = {item.name for item in fields(method.config_class)}
    for item in fields(method.config_class):
        if not item.metadata.get("flag", True) or namespace.get(item.name) is None:
            continue
        value = namespace[item.name]
        if item.name == "class_descriptions":
            from ..methods.aaclip.class_prompts import read_descriptions

            value = read_descriptions(value)
        values[item.name] = tuple(value) if isinstance(value, list) else value
    if "dataset" in names:
        dataset = namespace.get("dataset")
        if dataset or data_path:
            values["dataset"] = dataset or Path(data_path).name
    return values


def training_settings(namespace: Namespace, method: Method) -> Any:
    """The method's training settings (``TrainConfig.method``) from the flags."""
    cls = method.training_config_class
    if cls is None:
        raise UsageError(f"{method.name} does not train")
    values = {item.name: namespace[item.name] for item in fields(cls)
              if item.metadata.get("flag", True) and item.name in namespace and namespace[item.name] is not None}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def plain_settings(namespace: Namespace) -> Dict[str, Any]:
    """The plain values of parsed flags, stored with checkpoints so a run can be traced."""
    values = namespace.as_dict() if hasattr(namespace, "as_dict") else dict(vars(namespace))
    return {k: v for k, v in values.items()
            if k != "config" and isinstance(v, (str, int, float, bool, list, type(None)))}


class ConsoleHandler(logging.StreamHandler):
    """Writes log lines through ``tqdm.write``: a line logged while a progress bar is drawn goes
    above the bar, which is redrawn below it, instead of running into it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging reports its own failures
            self.handleError(record)


def _quiet_open_clip(record: logging.LogRecord) -> bool:
    """open_clip logs model-building chatter at INFO on the root logger; keep only its warnings."""
    return record.levelno >= logging.WARNING or "open_clip" not in record.pathname


def setup_logging(save_path: Optional[str | Path] = None, filename: str = "log.txt", verbose: bool = False) -> None:
    """Log to the console and, when ``save_path`` is given, to ``save_path/filename`` (the
    command line configures logging; the library never does).

    Under ``torchrun`` only rank 0 logs information and writes the file; the other processes
    print their warnings and errors, tagged with their rank.
    """
    from ..engine.distributed import get_rank, is_distributed, is_main_process

    handlers: List[logging.Handler] = [ConsoleHandler(sys.stdout)]
    main = is_main_process()
    if save_path is not None and main:
        Path(save_path).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(save_path) / filename, delay=True))
    for handler in handlers:
        handler.addFilter(_quiet_open_clip)
    level = (logging.DEBUG if verbose else logging.INFO) if main else logging.WARNING
    rank = f"[rank {get_rank()}] " if is_distributed() else ""
    logging.basicConfig(level=level, format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)


def program_name(command: str, script: str) -> str:
    """How the user started ``command``, for help and error lines: ``train.py`` when run as the
    repository's script, else ``anomaly-clip train``."""
    return script if Path(sys.argv[0]).name == script else f"anomaly-clip {command}"


def method_names() -> List[str]:
    return [method.name for method in registered_methods()]


def data_path_flag(command: CommandParser, name: str, required: bool, title: str = "data") -> None:
    """The dataset root flag of a command (``--train_data_path`` or ``--data_path``)."""
    command.add_argument(f"--{name}", title=title, required=required, default=None,
                         help="dataset root holding its metadata file")
