"""Settings as dataclasses: the one place where every default is written (no torch import).

Each field may carry command-line facts in its metadata (:func:`setting`): a help text, former
names that still work (``aliases``) and whether the command line exposes it. The command line
(:mod:`anomaly_clip.cli`) derives its flags, defaults and help from these fields; the library
never parses arguments.
"""
from __future__ import annotations

from dataclasses import MISSING, field, fields
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple


def setting(default: Any = MISSING, help: str = "", aliases: Sequence[str] = (), flag: bool = True,
            default_factory: Any = MISSING, metavar: Optional[str] = None, choices: Optional[Sequence[Any]] = None,
            minimum: Optional[float] = None) -> Any:
    """A dataclass field with the command-line facts of its flag.

    ``aliases`` are former names (``levels`` for ``features_list``): the flag accepts them and a
    checkpoint or config file that stored a value under one of them still loads. ``flag=False``
    keeps a field out of the command line (values only a file or the API sets). ``minimum``: the
    smallest value the command line accepts (``--batch_size``: 1), checked when flags are parsed.
    """
    metadata = {"help": help, "aliases": tuple(aliases), "flag": flag, "metavar": metavar,
                "choices": tuple(choices) if choices is not None else None, "minimum": minimum}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def renamed_fields(cls: type) -> Dict[str, str]:
    """Former name -> current name of every field of dataclass ``cls`` that was renamed."""
    return {alias: f.name for f in fields(cls) for alias in f.metadata.get("aliases", ())}


def field_values(cls: type, values: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``values`` with former field names replaced by current ones, lists as tuples; an unknown
    name is an error naming the fields ``cls`` has."""
    values = dict(values or {})
    for old, new in renamed_fields(cls).items():
        if old in values:
            value = values.pop(old)
            values.setdefault(new, value)
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; it has {sorted(names)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def block_numbers(name: str, values: Any, allow_empty: bool = False) -> Tuple[int, ...]:
    """``values`` as a tuple of 1-based transformer block numbers, each once (``features_list``,
    ``few_shot_features``); a number below 1, a block named twice (its maps would be summed twice),
    or an empty list where one is needed is a ``ValueError`` naming the setting."""
    blocks = tuple(int(value) for value in values)
    if not blocks and not allow_empty:
        raise ValueError(f"{name} must name at least one block")
    if any(block < 1 for block in blocks):
        raise ValueError(f"{name} must name blocks by their 1-based numbers, got {list(blocks)}")
    twice = sorted({block for block in blocks if blocks.count(block) > 1})
    if twice:
        raise ValueError(f"{name} names block(s) {twice} more than once, got {list(blocks)}")
    return blocks


def check_choice(name: str, value: Any, choices: Tuple[Any, ...]) -> None:
    """``ValueError`` naming the field and its choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
