"""Flags from settings dataclasses, and ``--config`` files, for every sub-command (jsonargparse).

Every flag comes from a dataclass field declared with :func:`anomaly_clip.settings.setting`: its
name (and former names, its ``aliases``) gives the flag in both spellings (``--save_path`` and
``--save-path``), its type the conversion, its metadata the help, choices and metavar, and the
field default the flag default. Nothing here writes a default of its own.

``--config FILE`` reads a YAML file of flag values by field name: its ``train:`` / ``test:`` /
... section (a file without sections applies as a whole), plus the top-level keys other than the
sections (``method``). ``${VAR}`` and ``${VAR:-default}`` are read from the environment, so one
protocol file serves every machine; a value left waiting for an unset variable is an error
only when no flag overrides it. Flags on the command line override the file wherever they
stand. ``--print_config`` prints the resolved settings, which ``--config`` accepts again, as it
does the ``<section>_config.yaml`` each run writes beside its outputs.
"""
from __future__ import annotations

import logging
import os
import re
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace, set_loader

logger = logging.getLogger(__name__)

SECTIONS = ("train", "test", "predict", "calibrate", "demo", "protocol", "summarize", "synthesize", "convert",
            "export")
DESCRIPTIVE_KEYS = ("description", "published", "reference")
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^${}]*))?\}")


class UsageError(ValueError):
    """Flags that cannot be used as given (the message says why and what to do)."""


class ConfigError(UsageError):
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
    """The mapping in a YAML file; a missing or empty file (nothing but comments, or ``null``), bad
    YAML or a non-mapping is a :class:`ConfigError` naming the file (an empty one was jsonargparse's
    ``Unexpected config:``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if content is None:
        raise ConfigError(f"{path} is empty: it holds no settings (give a mapping such as 'epoch: 5', or drop "
                          "--config)")
    if not isinstance(content, dict):
        raise ConfigError(f"{path} must hold a mapping of settings, not a {type(content).__name__}")
    return content


def select_section(content: Mapping[str, Any], section: str, source: str = "the config file") -> Dict[str, Any]:
    """Values for one command: the shared top-level keys updated by the ``section`` mapping,
    variables expanded (unset ones left as :class:`UnsetVariable`)."""
    has_sections = any(name in content for name in SECTIONS)
    values = {k: v for k, v in content.items() if k not in SECTIONS and k not in DESCRIPTIVE_KEYS}
    if has_sections:
        own = content.get(section)
        if own is None:
            other = next(name for name in SECTIONS if name in content)
            raise ConfigError(f"{source} has no '{section}:' section (it is a {other} configuration)")
        if not isinstance(own, dict):
            raise ConfigError(f"{source}: '{section}:' must be a mapping of flag names to values")
        values.update(own)
    return {key: expand_variables(value) for key, value in values.items()}


def section_values(path: str | os.PathLike, section: str) -> Dict[str, Any]:
    """The values a command reads from the config file at ``path`` (see :func:`select_section`)."""
    return select_section(read_config_file(path), section, str(path))


# ---- flags from dataclass fields --------------------------------------------------------------------
def spellings(name: str) -> List[str]:
    """``--name`` with ``_`` and with ``-``."""
    return list(dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}"]))


def _unwrap_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) is typing.Union:
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(arguments) == 1:
            return arguments[0]
    return annotation


@dataclass
class Flag:
    """One flag: its destination, spellings, and how values convert."""

    dest: str
    names: List[str]
    kwargs: Dict[str, Any]
    group: str
    choices: Optional[Tuple[Any, ...]] = None
    length: Optional[int] = None  # a fixed number of values (a field ``Tuple[float, float]``: 2)
    minimum: Optional[float] = None  # the smallest value accepted (``setting(minimum=...)``)


@dataclass
class FlagTable:
    """The flags of one parser by destination (the config loader checks files against it)."""

    flags: Dict[str, Flag] = field(default_factory=dict)
    renamed: Dict[str, str] = field(default_factory=dict)

    def option(self, dest: str) -> str:
        flag = self.flags.get(dest)
        return flag.names[0] if flag else f"--{dest}"


def field_flag(item: Any, hints: Mapping[str, Any], default: Any, help_default: Optional[str] = None,
               group: str = "") -> Flag:
    """The :class:`Flag` of dataclass field ``item`` with the given default."""
    annotation = _unwrap_optional(hints[item.name])
    metadata = item.metadata
    length = None
    aliases = tuple(metadata.get("aliases", ()))
    names = [spelling for name in (item.name, *aliases) for spelling in spellings(name)]
    kwargs: Dict[str, Any] = {"dest": item.name, "default": default}
    text = metadata.get("help", "")
    origin = typing.get_origin(annotation)
    if annotation is bool:
        kwargs["action"] = "store_true"
    elif origin in (tuple, list):
        arguments = typing.get_args(annotation)
        element = arguments[0] if arguments else str
        kwargs.update(type=element, nargs="+")
        if origin is tuple and len(arguments) > 1 and Ellipsis not in arguments:
            length = len(arguments)
            kwargs["nargs"] = length
            names_of_values = tuple(str(metadata.get("metavar", "")).split())
            if len(names_of_values) == length:
                kwargs["metavar"] = names_of_values
    elif origin in (dict, Mapping) or annotation is dict:
        kwargs["type"] = str
    else:
        kwargs["type"] = annotation
    choices = metadata.get("choices")
    if choices:
        kwargs["choices"] = list(choices)
        if kwargs.get("type") is str:
            del kwargs["type"]
    if metadata.get("metavar") and "metavar" not in kwargs:
        kwargs["metavar"] = metadata["metavar"]
    if help_default is not None:
        text = f"{text} (default {help_default})"
    kwargs["help"] = text or " "
    return Flag(item.name, names, kwargs, group, tuple(choices) if choices else None, length, metadata.get("minimum"))


def dataclass_flags(cls: type, group: str, none_defaults: bool = False, skip: Iterable[str] = (),
                    help_defaults: Optional[Mapping[str, str]] = None) -> List[Flag]:
    """Flags of every command-line field of dataclass ``cls`` (``flag=False`` fields left out).

    ``none_defaults``: each flag defaults to None, meaning "keep the value of the checkpoint or
    the method" (``help_defaults`` may name the values meant)."""
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    flags = []
    for item in fields(cls):
        if item.name in skip or not item.metadata.get("flag", True) or item.name not in hints:
            continue
        if none_defaults:
            default = None
        elif item.default is not MISSING:
            default = item.default
        elif item.default_factory is not MISSING:  # type: ignore[misc]
            default = item.default_factory()  # type: ignore[misc]
        else:
            default = None
        if isinstance(default, tuple):
            default = list(default)
        flags.append(field_flag(item, hints, default, (help_defaults or {}).get(item.name), group))
    return flags


_KINDS = {bool: "true or false (a YAML boolean, unquoted)", int: "an integer", float: "a number", str: "a string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
_JSONARGPARSE_TYPE = re.compile(r'Parser key "(?P<key>[^"]+)"(?P<element> element \d+)?:\s*Expected a <class '
                                r"'(?P<type>\w+)'>\. Got value: (?P<value>.*)")
_REQUIRED = re.compile(r"the following arguments are required: (?P<names>.*)")


def flag_kind(flag: Flag) -> Tuple[Optional[type], bool]:
    """(value type, takes a list) of a flag, from how it converts its arguments."""
    kwargs = flag.kwargs
    if kwargs.get("action") in ("store_true", "store_false"):
        return bool, False
    many = kwargs.get("nargs") in ("+", "*") or flag.length is not None
    kind = kwargs.get("type", str if "choices" in kwargs or not kwargs.get("action") else None)
    return (kind if kind in _KINDS else None), many


def _convert(kind: Optional[type], value: Any) -> Any:
    """``value`` as ``kind``, or raise ``TypeError``."""
    if kind is None:
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise TypeError
    if kind is str:
        if isinstance(value, (str, int, float)):
            return str(value)
        raise TypeError
    if isinstance(value, str):
        try:
            value = float(value) if kind is float else int(value.strip())
        except ValueError:
            raise TypeError from None
    if kind is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise TypeError
            value = int(value)
        return int(value)
    return float(value)


def flag_value(flag: Flag, key: str, value: Any, source: str) -> Any:
    """A config-file value converted for ``flag``, or a :class:`ConfigError` naming ``key`` and ``source``."""
    kind, many = flag_kind(flag)
    if value is None:
        if flag.kwargs.get("default") is not None and not many:
            raise ConfigError(f"{source}: {key} is empty (null); give {_KINDS.get(kind, 'a value')} or remove the key "
                              "to keep its default")
        return None
    if isinstance(value, list) and not many:
        raise ConfigError(f"{source}: {key} takes one value, got a list {value}")
    items = value if isinstance(value, list) else [value]
    try:
        converted = [_convert(kind, item) for item in items]
    except TypeError:
        bad = next(item for item in items if not _convertible(kind, item))
        what = f"{_KINDS[kind]} or a list of {_PLURALS[kind]}" if many else _KINDS[kind]
        raise ConfigError(f"{source}: {key} must be {what}, got {bad!r} ({type(bad).__name__})") from None
    if flag.length is not None and len(converted) != flag.length:
        raise ConfigError(f"{source}: {key} takes {_count_of(flag)}, got {len(converted)}: {items}")
    return converted if many else converted[0]


def _count_of(flag: Flag) -> str:
    """``2 values (LOW HIGH)``: how many values a fixed-length flag takes."""
    metavar = flag.kwargs.get("metavar")
    names = f" ({' '.join(metavar)})" if isinstance(metavar, tuple) else ""
    return f"exactly {flag.length} values{names}"


def check_value_counts(argv: Sequence[str], table: FlagTable) -> None:
    """A fixed-length flag (``--map_range LOW HIGH``) followed by another number of values than it
    takes is a :class:`UsageError` naming it (before: ``too many values to unpack``, or argparse's
    ``unrecognized arguments: 2``). Values are the tokens after the flag that convert to its type."""
    for flag in table.flags.values():
        if flag.length is None:
            continue
        kind = flag.kwargs.get("type", str)
        for index, token in enumerate(argv):
            name, equals, attached = token.partition("=")
            if name not in flag.names:
                continue
            values = [attached] if equals else []
            for following in argv[index + 1:]:
                if equals or following.startswith("--") or not _convertible(kind, following):
                    break
                values.append(following)
            if len(values) != flag.length:
                raise UsageError(f"{name} takes {_count_of(flag)}, got {len(values)}"
                                 f"{': ' + ' '.join(values) if values else ''}")


def _convertible(kind: Optional[type], value: Any) -> bool:
    try:
        _convert(kind, value)
    except TypeError:
        return False
    return True


def usage_message(text: str, table: FlagTable) -> str:
    """jsonargparse's message in the terms of the flags: ``--epoch expects an integer, got 'ten'``."""
    text = " ".join(text.split())
    found = _JSONARGPARSE_TYPE.match(text)
    if found:
        kind = {"int": int, "float": float, "bool": bool, "str": str}.get(found.group("type"))
        value = found.group("value")
        return f"{table.option(found.group('key'))} expects {_KINDS.get(kind, found.group('type'))}, got {value!r}"
    found = _REQUIRED.match(text)
    if found:
        names = [name.strip() for name in found.group("names").split(",")]
        return "missing " + ", ".join(table.option(name) if name in table.flags and table.flags[name].names[0]
                                      .startswith("--") else f"the {name} argument" for name in names)
    return text


class CommandParser:
    """A sub-command's parser built from flag groups, with ``--config`` and ``--print_config``.

    Parsing returns a jsonargparse ``Namespace``; :meth:`parse` also refuses settings left on
    unset environment variables and reports every problem as one :class:`UsageError` line.
    """

    def __init__(self, prog: str, description: str, section: str):
        self.section = section
        self.table = FlagTable()
        mode = f"anomaly_clip_{section}"
        set_loader(mode, lambda text: self._load(text))
        self.parser = ArgumentParser(prog=prog, description=description, parser_mode=mode, exit_on_error=False)
        self.parser.add_argument("--config", action=ActionConfigFile, metavar="FILE",
                                 help=f"YAML file of settings (its '{section}:' section and shared keys, e.g. a "
                                      "protocol under configs/, or a resolved *_config.yaml); flags given here "
                                      "override it")
        self.groups: Dict[str, Any] = {}
        self._unset: Dict[str, UnsetVariable] = {}
        self.presets: Dict[str, Tuple[str, ...]] = {}

    def add_preset(self, dest: str, replaces: Sequence[str]) -> None:
        """Make the boolean flag ``dest`` a preset of the settings ``replaces``: when it is on, the
        values a config file gives them make way for the preset's (reset to None and logged); a
        value given as a flag stays, so the command can call it a conflict."""
        self.presets[dest] = tuple(replaces)

    def group(self, title: str) -> Any:
        if title not in self.groups:
            self.groups[title] = self.parser.add_argument_group(title)
        return self.groups[title]

    def add_flags(self, flags: Iterable[Flag], title: str) -> None:
        """Add flags under ``title``; a destination that exists already is skipped (methods share fields)."""
        for flag in flags:
            if flag.dest in self.table.flags:
                known = self.table.flags[flag.dest]
                extra = [name for name in flag.names if name not in known.names]
                if extra:  # another method's former names of a shared field
                    kwargs = dict(known.kwargs, help=f"former name of {known.names[0]}")
                    self.group(known.group or title).add_argument(*extra, **kwargs)
                    known.names += extra
                    for name in extra:
                        self.table.renamed[name[2:].replace("-", "_")] = flag.dest
                continue
            self.group(title).add_argument(*flag.names, **flag.kwargs)
            self.table.flags[flag.dest] = flag
            for name in flag.names:
                bare = name[2:]
                if bare.replace("-", "_") != flag.dest:
                    self.table.renamed[bare.replace("-", "_")] = flag.dest

    def add_argument(self, *names: str, title: str = "", **kwargs: Any) -> None:
        """A flag without a dataclass field (positional inputs, switches of the command itself)."""
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        all_names = [n for name in names for n in (spellings(name.lstrip("-")) if name.startswith("--") else [name])]
        target = self.group(title) if title else self.parser
        target.add_argument(*dict.fromkeys(all_names), **kwargs)
        self.table.flags[dest] = Flag(dest, list(dict.fromkeys(all_names)), kwargs, title,
                                      tuple(kwargs["choices"]) if kwargs.get("choices") else None)

    def format_help(self) -> str:
        return self.parser.format_help()

    # ---- config files ---------------------------------------------------------------------------
    def _load(self, text: str) -> Any:
        """jsonargparse's loader: YAML values, and for a whole file the command's section checked
        against the flag table (:meth:`check_values`) with variables expanded."""
        value = yaml.safe_load(text)
        if not isinstance(value, dict):
            return value
        return self.check_values(select_section(value, self.section), "--config")

    def check_values(self, values: Mapping[str, Any], source: str) -> Dict[str, Any]:
        """Config-file ``values`` by flag destination (former names renamed), each checked against
        its flag: known key, type (a quoted number converts, as ``${VAR}`` values are strings; a
        string is never a boolean; a single value for a list flag is a one-element list), choices.
        A problem is a :class:`ConfigError` naming the key and ``source``. Values left on unset
        variables are set aside for :meth:`_check_unset`."""
        renamed = {self.table.renamed.get(key, key): item for key, item in values.items()}
        unknown = sorted(key for key in renamed if key not in self.table.flags)
        if unknown:
            raise ConfigError(f"{source}: unknown {self.section} settings {unknown}; '{self.parser.prog} --help' lists "
                              "the flags (use their long names with '_')")
        checked: Dict[str, Any] = {}
        for key, item in renamed.items():
            if isinstance(item, UnsetVariable) or (isinstance(item, list) and any(isinstance(v, UnsetVariable)
                                                                                   for v in item)):
                self._unset[key] = item if isinstance(item, UnsetVariable) else next(
                    v for v in item if isinstance(v, UnsetVariable))
                continue
            flag = self.table.flags[key]
            item = flag_value(flag, key, item, source)
            if flag.choices is not None and item is not None:
                bad = [v for v in (item if isinstance(item, list) else [item]) if v not in flag.choices]
                if bad:
                    raise ConfigError(f"{source}: {key} must be one of {sorted(map(str, flag.choices))}, got {bad}")
            checked[key] = item
        return checked

    def parse(self, argv: Sequence[str]) -> Namespace:
        """Parse ``argv`` (``--config`` applied first, so flags override it wherever they stand).
        Every problem is one :class:`UsageError` (:class:`ConfigError` for a file) line that names
        the flag or the file and key, and ends with where the help is."""
        argv = list(argv)
        configs, rest, index = [], [], 0
        while index < len(argv):
            if argv[index] == "--config" and index + 1 < len(argv):
                configs += argv[index:index + 2]
                index += 2
                continue
            if argv[index].startswith("--config="):
                configs.append(argv[index])
            else:
                rest.append(argv[index])
            index += 1
        self._unset = {}
        from_files: Dict[str, Any] = {}
        for item in configs:
            path = item.split("=", 1)[1] if item.startswith("--config=") else item
            if item != "--config" and Path(path).is_file():
                from_files.update(self.check_values(section_values(path, self.section), path))
        self._unset = {}
        try:
            check_value_counts(rest, self.table)
        except UsageError as error:
            raise UsageError(f"{error}; see '{self.parser.prog} --help'") from None
        try:
            namespace = self.parser.parse_args(configs + rest)
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001 - jsonargparse reports usage problems as ArgumentError
            self._check_unset(configs, rest)
            message = usage_message(str(error), self.table)
            raise (ConfigError if configs else UsageError)(f"{message}; see '{self.parser.prog} --help'") from None
        self._check_unset(configs, rest)
        self._check_minimums(namespace)
        self._apply_presets(namespace, from_files, rest)
        return namespace

    def _check_minimums(self, namespace: Namespace) -> None:
        """A value below its flag's minimum (``--batch_size 0``, ``--num_workers -1``) is one line
        naming the flag, before the command does any work (before: ``block must be >= 1`` or
        torch's own text, after the model was loaded)."""
        for flag in self.table.flags.values():
            value = namespace.get(flag.dest) if flag.minimum is not None else None
            if value is not None and not isinstance(value, bool) and value < flag.minimum:
                raise UsageError(f"{flag.names[0]} must be at least {flag.minimum:g}, got {value}; "
                                 f"see '{self.parser.prog} --help'")

    def _apply_presets(self, namespace: Namespace, from_files: Mapping[str, Any], rest: List[str]) -> None:
        """Reset the config-file values of the settings an active preset replaces (:meth:`add_preset`)."""
        given = {arg.split("=", 1)[0] for arg in rest if arg.startswith("--")}
        for dest, replaces in self.presets.items():
            if not namespace.get(dest):
                continue
            replaced = [key for key in replaces if key in from_files and namespace.get(key) is not None
                        and not given & set(self.table.flags[key].names)]
            for key in replaced:
                namespace[key] = None
            if replaced:
                logger.info("%s replaces the config file's %s", self.table.option(dest),
                            ", ".join(f"{key}={from_files[key]}" for key in replaced))

    def _check_unset(self, configs: List[str], rest: List[str]) -> None:
        """A setting of the file left on an unset variable, and not given as a flag, is an error."""
        given = {arg.split("=", 1)[0] for arg in rest if arg.startswith("--")}
        for key, value in self._unset.items():
            if not given & set(self.table.flags[key].names):
                raise ConfigError(f"{configs[-1].split('=', 1)[-1]}: {key} is {str(value)!r}, but "
                                  f"${value.variable} is not set: export {value.variable}=... or pass "
                                  f"{self.table.option(key)}")


def plain(value: Any) -> Any:
    """A value as YAML writes it back (paths and tuples as strings and lists)."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, str):
        return str(value)
    return value


def write_resolved_config(values: Mapping[str, Any], section: str, directory: str | os.PathLike,
                          source: Optional[str] = None) -> Path:
    """Write a run's settings as ``<section>_config.yaml`` (usable again with ``--config``)."""
    values = {key: plain(value) for key, value in values.items() if key != "config"}
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


def config_source(namespace: Namespace) -> Optional[str]:
    """The last ``--config`` file of a parse, None without one."""
    files = namespace.get("config") if hasattr(namespace, "get") else getattr(namespace, "config", None)
    return str(files[-1]) if files else None
