"""Built-in methods, registered here by name (nothing is imported until a method is used).

Each method is one folder: ``config.py`` (its settings, the one place defaults are written, no
torch), ``model.py`` (the detector), ``training.py`` (its recipe on the shared loop) and
``official.py`` (the official code's checkpoint format). See ``docs/adding_a_method.md``.
"""
from ..engine.registry import METHODS, Method, find_method, register_method

register_method(
    "anomalyclip", detector=f"{__name__}.anomalyclip.model:AnomalyCLIP",
    config=f"{__name__}.anomalyclip.config:AnomalyCLIPConfig",
    training=f"{__name__}.anomalyclip.training:train", training_config=f"{__name__}.anomalyclip.config:AnomalyCLIPTraining",
    description="object-agnostic prompts, deep text tokens, DPAM dual path, glocal loss (ICLR 2024)",
    exportable=True)
register_method(
    "aaclip", detector=f"{__name__}.aaclip.model:AAClipDetector", config=f"{__name__}.aaclip.config:AAClipConfig",
    training=f"{__name__}.aaclip.training:train", training_config=f"{__name__}.aaclip.config:AAClipTraining",
    description="two-stage residual adapters (text, then image) with a disentangle loss (CVPR 2025)",
    final_stage="image", exportable=True)
register_method(
    "anomalyclip_adapters", detector=f"{__name__}.anomalyclip_adapters.model:PromptAdapterDetector",
    config=f"{__name__}.anomalyclip_adapters.config:PromptAdapterConfig",
    training=f"{__name__}.anomalyclip_adapters.training:train",
    training_config=f"{__name__}.anomalyclip_adapters.config:PromptAdapterTraining",
    description="AnomalyCLIP prompts as the anchors of AA-CLIP's image adapters (beyond both papers)",
    final_stage="image", exportable=True)


def __getattr__(name: str):
    if name in ("load", "identify_checkpoint", "create_detector"):
        from ..engine import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_method(name: str) -> Method:
    """The built-in or plugged-in method called ``name`` (case, '-' and '_' ignored)."""
    return find_method(name)


def list_methods() -> list:
    """Names of the registered methods (``anomalyclip``, ``aaclip``, ...)."""
    return list(METHODS)


__all__ = ["METHODS", "Method", "create_detector", "get_method", "identify_checkpoint", "list_methods", "load",
           "register_method"]
