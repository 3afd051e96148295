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
register_method(
    "clip", detector=f"{__name__}.clip.model:CLIPDetector", config=f"{__name__}.clip.config:CLIPConfig",
    description="training-free baseline: two class-aware prompts on plain CLIP (AnomalyCLIP appendix A.2)",
    exportable=True)
register_method(
    "clip_ac", detector=f"{__name__}.clip_ac.model:CLIPACDetector", config=f"{__name__}.clip_ac.config:CLIPACConfig",
    description="training-free baseline: CLIP with the ImageNet template ensemble (AnomalyCLIP appendix A.2)",
    exportable=True)
register_method(
    "winclip", detector=f"{__name__}.winclip.model:WinCLIPDetector",
    config=f"{__name__}.winclip.config:WinCLIPConfig",
    description="training-free: prompt ensemble, multi-scale windows, harmonic aggregation; WinCLIP+ with "
                "--reference_images K (CVPR 2023)")
register_method(
    "vand", detector=f"{__name__}.vand.model:VANDDetector", config=f"{__name__}.vand.config:VANDConfig",
    training=f"{__name__}.vand.training:train", training_config=f"{__name__}.vand.config:VANDTraining",
    description="APRIL-GAN: linear projections of intermediate patch tokens, focal + Dice, few-shot memory "
                "(VAND 2023 challenge)", exportable=True)
register_method(
    "coop", detector=f"{__name__}.coop.model:CoOpDetector", config=f"{__name__}.coop.config:CoOpConfig",
    training=f"{__name__}.coop.training:train", training_config=f"{__name__}.anomalyclip.config:AnomalyCLIPTraining",
    description="learnt context before 'normal/anomalous [cls]', trained and scored as AnomalyCLIP (its "
                "appendix A.2)", exportable=True)


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


def training_free_methods() -> list:
    """Registered methods without learnt parts: they evaluate with their defaults, no checkpoint."""
    return [method.name for method in METHODS.values() if method.training_free]


__all__ = ["METHODS", "Method", "create_detector", "get_method", "identify_checkpoint", "list_methods", "load",
           "register_method", "training_free_methods"]
