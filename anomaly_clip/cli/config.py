"""Run configurations as YAML files: ``train.py --config FILE`` / ``test.py --config FILE``.

A file holds flag values by their destination names (``train_data_path``, ``n_ctx``, ...), in a
``train:`` and/or ``test:`` section; top-level keys other than the sections (``method``) apply to
both. ``${VAR}`` and ``${VAR:-default}`` are read from the environment, so one protocol file
serves every machine. Flags given on the command line override the file; each run writes the
configuration it resolved beside its outputs, which ``--config`` accepts again.
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import yaml

from ..methods import identify_checkpoint

SECTIONS = ("train", "test")
DESCRIPTIVE_KEYS = ("description", "reference")
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^${}]*))?\}")


class ConfigError(ValueError):
    """A configuration file that cannot be used as it is (the message says why and what to do)."""


class UnsetVariable(str):
    """A value that needed an environment variable that is not set; an error only if no flag overrides it."""

    def __new__(cls, text: str, variable: str) -> "UnsetVariable":
        value = super().__new__(cls, text)
        value.variable = variable
        return value


def expand_variables(value: Any) -> Any:
    """``${VAR}`` / ``${VAR:-default}`` replaced from the environment, recursively; defaults may
    themselves hold variables (``${CKPT:-${CKPT_DIR:-./checkpoints}/epoch_15.pth}``)."""
    if isinstance(value, list):
        return [expand_variables(item) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group("name"), match.group("default")
        if os.environ.get(name):
            return os.environ[name]
        return default if default is not None else match.group(0)

    expanded, previous = value, None
    while expanded != previous:
        previous, expanded = expanded, _VARIABLE.sub(substitute, expanded)
    unset = _VARIABLE.search(expanded)
    return UnsetVariable(expanded, unset.group("name")) if unset else expanded


def read_config_file(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not a {type(content).__name__}")
    return content


def section_values(path: str | os.PathLike, section: str) -> Dict[str, Any]:
    """Values for one entry point: the shared top-level keys updated by the ``section`` mapping."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    content = read_config_file(path)
    has_sections = any(name in content for name in SECTIONS)
    values = {k: v for k, v in content.items() if k not in SECTIONS and k not in DESCRIPTIVE_KEYS}
    if has_sections:
        own = content.get(section)
        if own is None:
            other = next(name for name in SECTIONS if name in content)
            raise ConfigError(f"{path} has no '{section}:' section (it is a {other} configuration)")
        if not isinstance(own, dict):
            raise ConfigError(f"{path}: '{section}:' must be a mapping of flag names to values")
        values.update(own)
    return {key: expand_variables(value) for key, value in values.items()}


def config_path_from_argv(argv: Sequence[str]) -> Optional[str]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(list(argv))
    return known.config


def apply_config(parser: argparse.ArgumentParser, path: str, section: str) -> Dict[str, Any]:
    """Make the file's values the parser's defaults (command-line flags still override them)."""
    values = section_values(path, section)
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(key for key in values if key not in actions)
    if unknown:
        raise ConfigError(f"{path}: unknown {section} settings {unknown}; "
                          f"'{parser.prog} --help' lists the flags (use their long names with '_')")
    for key, value in values.items():
        action = actions[key]
        if isinstance(value, list) and action.nargs is None:
            raise ConfigError(f"{path}: {key} takes one value, got a list {value}")
        if value is not None and action.type is not None and not isinstance(value, UnsetVariable):
            converter = action.type
            value = [converter(v) for v in value] if isinstance(value, list) else converter(value)
        if action.choices is not None and value is not None and not isinstance(value, UnsetVariable):
            choices = value if isinstance(value, list) else [value]
            bad = [v for v in choices if v not in action.choices]
            if bad:
                raise ConfigError(f"{path}: {key} must be one of {sorted(map(str, action.choices))}, got {bad}")
        values[key] = value
        action.required = False
    parser.set_defaults(**values)
    return values


def check_unset_variables(args: argparse.Namespace, parser: argparse.ArgumentParser, path: str) -> None:
    """A setting left waiting for an unset environment variable, and not given as a flag, is an error."""
    flags = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    for key, value in vars(args).items():
        if isinstance(value, UnsetVariable):
            raise ConfigError(f"{path}: {key} is {value!r}, but ${value.variable} is not set: "
                              f"export {value.variable}=... or pass {flags.get(key, '--' + key)}")


def write_resolved_config(args: argparse.Namespace, parser: argparse.ArgumentParser, section: str,
                          directory: str | os.PathLike, source: Optional[str] = None) -> Path:
    """Write every setting of this run as ``<section>_config.yaml`` (usable again with ``--config``)."""
    skip = {"help", "config"}
    values = {action.dest: _plain(getattr(args, action.dest)) for action in parser._actions
              if action.dest not in skip and hasattr(args, action.dest)}
    content: Dict[str, Any] = {}
    if source:
        content["description"] = f"settings resolved from {source} and the command line"
    if "method" in values:
        content["method"] = values.pop("method")
    content[section] = values
    path = Path(directory) / f"{section}_config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):
        return str(value)
    return value


def add_config_argument(parser: argparse.ArgumentParser, section: str) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help=f"YAML file of settings (its '{section}:' section and shared keys, e.g. a protocol "
                             "under configs/); flags given here override it")


def preparse(argv: Sequence[str], section: str, names: Sequence[str]) -> Dict[str, Any]:
    """Values of ``names`` known before the full parser exists: the command line first, then the
    config file (they decide which method's flags the parser gets)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    for name in names:
        pre.add_argument(f"--{name}")
    known, _ = pre.parse_known_args(list(argv))
    found = {name: getattr(known, name) for name in names}
    if known.config:
        file_values = section_values(known.config, section)
        for name in names:
            if found[name] is None and not isinstance(file_values.get(name), UnsetVariable):
                found[name] = file_values.get(name)
    return found


def parse_arguments(parser: argparse.ArgumentParser, argv: Sequence[str], section: str) -> argparse.Namespace:
    """Parse ``argv`` over the ``--config`` file's values, refusing settings left on unset variables."""
    path = config_path_from_argv(argv)
    if path:
        apply_config(parser, path, section)
    args = parser.parse_args(list(argv))
    if path:
        check_unset_variables(args, parser, path)
    return args


def checkpoint_method(argv: Sequence[str], section: str = "test") -> str:
    """The method whose flags a checkpoint-reading command needs: ``--method`` (command line or
    config file), else the one found in ``--checkpoint_path``, else AnomalyCLIP (for ``--help``)."""
    known = preparse(argv, section, ["method", "checkpoint_path"])
    if known["method"]:
        return known["method"]
    if known["checkpoint_path"] and "-h" not in argv and "--help" not in argv:
        return identify_checkpoint(known["checkpoint_path"])[0]
    return "anomalyclip"
