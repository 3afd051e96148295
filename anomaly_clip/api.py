"""The library's entry points: list the methods, create or load a detector, train it.

``list_methods`` reads the registry only (no torch); the others import the method they use.
"""
from __future__ import annotations

from typing import Any, List, Optional

from . import methods  # noqa: F401 - registers the built-in methods
from .engine.registry import find_method, method_names


def list_methods() -> List[str]:
    """Names of the registered methods, e.g. ``['anomalyclip', 'aaclip', 'anomalyclip_adapters']``."""
    return method_names()


def create_detector(method: str, backbone: Any = None, config: Any = None, device: Any = None, **overrides: Any):
    """A fresh detector of ``method``: see :func:`anomaly_clip.engine.checkpoint.create_detector`."""
    from .engine.checkpoint import create_detector as create

    return create(method, backbone=backbone, config=config, device=device, **overrides)


def load(checkpoint: Any, **options: Any):
    """A trained detector from our or an official checkpoint: see :func:`anomaly_clip.engine.checkpoint.load`."""
    from .engine.checkpoint import load as load_checkpoint

    return load_checkpoint(checkpoint, **options)


def load_backbone(config: Any = None, device: Any = None, **overrides: Any):
    """The frozen CLIP of a :class:`~anomaly_clip.clip.config.BackboneConfig` (fields may be given by
    keyword, e.g. ``model_name="anomaly-clip-tiny", random_init=True, image_size=112``)."""
    from .clip.backbone import load_backbone as build

    return build(config, device=device, **overrides)


def fit(detector: Any, data: Any, config: Optional[Any] = None):
    """Train ``detector`` with its method's recipe and return a
    :class:`~anomaly_clip.engine.training.TrainResult` (``final_checkpoint`` is the finished model).

    ``data``: :class:`~anomaly_clip.engine.training.TrainingData`, a dataset root (its test split,
    as the official protocols train), or a ready dataset. ``config``: a
    :class:`~anomaly_clip.engine.config.TrainConfig` whose ``method`` holds the method's own
    settings (its ``training_config`` dataclass; None means the official defaults). Stages are
    the method's business: AA-CLIP trains its text then its image adapters. The run holds the
    lock of ``config.save_path`` (a second run into it stops with an error).
    """
    from .engine.config import TrainConfig
    from .engine.training import training_lock

    spec = find_method(detector.method_name or type(detector).__name__)
    config = config if config is not None else TrainConfig()
    expected = spec.training_config_class
    if config.method is not None and expected is not None and not isinstance(config.method, expected):
        raise TypeError(f"TrainConfig.method of {spec.name} must be a {expected.__name__}, "
                        f"got {type(config.method).__name__}")
    with training_lock(config.save_path):
        return spec.recipe(detector, data, config)
