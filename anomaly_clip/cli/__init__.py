"""The application: ``anomaly-clip <command>``, ``train.py`` and ``test.py``.

The only place where arguments are parsed (jsonargparse, flags derived from the settings
dataclasses). Names load on first use, so ``anomaly-clip --help`` imports no torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {"COMMANDS": "main", "run": "main", "train_main": "train", "test_main": "test",
            "predict_main": "predict", "export_main": "export", "calibrate_main": "calibrate", "summarize_main": "summarize",
            "demo_main": "demo", "protocol_main": "protocol", "synthesize_main": "data", "convert_main": "data"}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
