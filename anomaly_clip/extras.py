"""Optional dependencies, grouped as pip extras of the package, and the one error for a missing one.

``pip install -e ".[export]"`` adds what ONNX export and ONNX Runtime inference need; code that
needs an extra imports it through :func:`require`, so a missing package ends in one line that names
the extra instead of a traceback from deep inside.
"""
from __future__ import annotations

from importlib import import_module
from types import ModuleType
from typing import Dict, Tuple

EXTRAS: Dict[str, Tuple[str, ...]] = {"export": ("onnx", "onnxruntime", "onnxscript")}


class MissingExtraError(ModuleNotFoundError):
    """A package of an optional extra is not installed (the message gives the pip command)."""


def require(extra: str, *modules: str) -> Tuple[ModuleType, ...]:
    """Import ``modules`` (default: every package of ``extra``); raise :class:`MissingExtraError`
    naming the extra and its install command when one is missing.

    >>> require("export", "onnx")[0].__name__  # doctest: +SKIP
    'onnx'
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {sorted(EXTRAS)}")
    imported = []
    for name in modules or EXTRAS[extra]:
        try:
            imported.append(import_module(name))
        except ImportError as error:
            raise MissingExtraError(
                f"{name} is not installed; it comes with the '{extra}' extra "
                f"({', '.join(EXTRAS[extra])}): pip install -e \".[{extra}]\"", name=name) from error
    return tuple(imported)
