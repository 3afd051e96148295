"""The application: ``anomaly-clip <command>``, ``train.py`` and ``test.py``.

The only place where arguments are parsed (jsonargparse, flags derived from the settings
dataclasses). Names load on first use, so ``anomaly-clip --help`` imports no torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {"COMMANDS": "main", "run": "main", "train_main": "train", "test_main": "test",
            "predict_main": "predict", "calibrate_main": "calibrate", "summarize_main": "summarize",
            "demo_main": "demo", "protocol_main": "protocol", "synthesize_main": "data", "convert_main": "data"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
