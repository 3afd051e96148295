"""Names of a package loaded on first use, so importing it stays cheap (no torch for ``--help``)."""
from __future__ import annotations

from importlib import import_module
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable[[str], Any], List[str]]:
    """``(__getattr__, __all__)`` for ``package`` whose name ``N`` lives in submodule ``exports[N]``
    (relative to the package); unknown names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f".{exports[name]}", package), name)

    return __getattr__, sorted(exports)
