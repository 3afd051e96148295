"""The method registry: a name -> the detector class and its command-line flags.

Each method folder registers itself when imported (``anomaly_clip.methods`` imports the
built-in ones); the engine and the command line look methods up here and never import a
method directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Type

from .detector import AnomalyDetector
from .flags import MethodFlags


@dataclass(frozen=True)
class Method:
    """A registered method: its name, detector class and command-line flags."""

    name: str
    detector: Type[AnomalyDetector]
    flags: MethodFlags


METHODS: Dict[str, Method] = {}


def register_method(name: str, detector: Type[AnomalyDetector], flags: MethodFlags) -> Method:
    """Add a method under ``name``; the detector class learns its name."""
    if name in METHODS:
        raise ValueError(f"method {name!r} is already registered")
    detector.method_name = name
    METHODS[name] = Method(name, detector, flags)
    return METHODS[name]


def canonical_method_name(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def find_method(name: str) -> Method:
    """The registered method called ``name`` (case, '-' and '_' ignored)."""
    key = canonical_method_name(name)
    for registered, method in METHODS.items():
        if canonical_method_name(registered) == key:
            return method
    raise KeyError(f"unknown method {name!r}; available: {sorted(METHODS)}")
