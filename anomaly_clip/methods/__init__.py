"""Built-in methods; importing this package registers them in :data:`anomaly_clip.engine.registry.METHODS`.

Each method is one folder: ``config.py`` (its settings, the one place defaults are written),
``model.py`` (the detector), ``training.py`` (its recipe on the shared loop), ``official.py``
(the reference code's checkpoint format) and ``flags.py`` (its command-line flags).
"""
from ..engine.checkpoint import identify_checkpoint, load
from ..engine.registry import METHODS, Method, find_method
from . import aaclip, anomalyclip, anomalyclip_adapters  # noqa: F401 - registers the built-in methods


def get_method(name: str) -> Method:
    """The built-in or plugged-in method called ``name``."""
    return find_method(name)


__all__ = ["METHODS", "Method", "get_method", "identify_checkpoint", "load"]
