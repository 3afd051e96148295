"""Checkpoints: our self-describing format, the reference formats, and :func:`load`.

Our files hold the method name, its config and the backbone config beside the trainable
weights, so evaluation needs no repeated architecture flags. Files written by the reference
code are recognised by their top-level keys and loaded into the same classes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..clip.backbone import BackboneConfig, CLIPBackbone, load_backbone
from ..files import atomic_path
from .calibration import attach_calibration, sidecar_path
from .detector import AnomalyDetector
from .registry import METHODS, find_method

logger = logging.getLogger(__name__)

FORMAT_NAME = "anomaly_clip"
FORMAT_VERSION = 1


def atomic_save(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`anomaly_clip.files.atomic_path`: an interrupted run or a full
    disk never leaves a truncated checkpoint under ``path`` (an earlier file there stays intact)."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)
    return path


def checkpoint_payload(detector: AnomalyDetector, **extra: Any) -> Dict[str, Any]:
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "method": detector.method_name,
        "method_config": detector.config.to_dict(),
        "backbone_config": detector.backbone.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in detector.trainable_state_dict().items()},
    }
    payload.update(extra)
    return payload


def save_checkpoint(path: str | os.PathLike, detector: AnomalyDetector, **extra: Any) -> Path:
    """Save ``detector`` in our format (atomically); ``extra`` entries are stored alongside, and a
    calibrated detector's thresholds go to the sidecar :func:`load` reads."""
    saved = atomic_save(checkpoint_payload(detector, **extra), path)
    if detector.calibration is not None:
        detector.calibration.save(sidecar_path(saved))
    return saved


def read_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path} is not a readable torch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dictionary")
    return checkpoint


def is_own_format(checkpoint: Dict[str, Any]) -> bool:
    return checkpoint.get("format") == FORMAT_NAME


def identify_checkpoint(path: str | os.PathLike) -> Tuple[str, Dict[str, Any], bool]:
    """Return (method name, checkpoint dict, is_own_format) for a file or an official folder,
    trying every registered method's reference format (import :mod:`anomaly_clip.methods`
    first to register the built-in ones)."""
    for method in METHODS.values():
        official = method.detector.read_official_checkpoint(str(path))
        if official is not None:
            return method.name, official, False
    checkpoint = read_checkpoint(path)
    if is_own_format(checkpoint):
        if checkpoint.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer anomaly_clip (format {checkpoint['version']})")
        return checkpoint["method"], checkpoint, True
    raise ValueError(
        f"{path} is neither an anomaly_clip checkpoint nor a known official one "
        f"(top-level keys: {sorted(checkpoint)[:10]})"
    )


def build_detector(method: str, backbone: CLIPBackbone, method_config: Optional[dict] = None) -> AnomalyDetector:
    cls = find_method(method).detector
    return cls(backbone, cls.config_class.from_dict(method_config))


def load(checkpoint: str | os.PathLike, device: Optional[torch.device | str] = None,
         backbone_config: Optional[BackboneConfig] = None, method_config: Optional[dict] = None,
         backbone: Optional[CLIPBackbone] = None,
         configure_backbone: Optional[Callable[[BackboneConfig], BackboneConfig]] = None,
         calibration: Optional[str | os.PathLike] = None, **backbone_overrides: Any) -> AnomalyDetector:
    """Load a trained detector from our checkpoint or from an official checkpoint.

    Official files carry no configuration: the method's defaults (reference settings) are
    used, updated by ``method_config``. The backbone config is ``backbone_config`` if given,
    else the checkpoint's (or the method default), passed through ``configure_backbone`` and
    updated by keyword overrides (e.g. ``weights_path=..., image_size=...``). A ready
    ``backbone`` may be passed to share one across detectors. The thresholds in ``calibration``
    (a calibration JSON), else in the sidecar ``<checkpoint>.calibration.json`` when present and
    made for these weights, become ``detector.calibration``.
    """
    method, payload, own = identify_checkpoint(checkpoint)
    cls = find_method(method).detector
    if own:
        base_backbone = BackboneConfig.from_dict(payload["backbone_config"])
        config_values = dict(payload.get("method_config") or {})
    else:
        base_backbone = cls.default_backbone_config()
        config_values = {}
    config_values.update(method_config or {})
    if backbone is None:
        backbone_cfg = backbone_config or base_backbone
        if configure_backbone is not None:
            backbone_cfg = configure_backbone(backbone_cfg)
        backbone = load_backbone(backbone_cfg, device=device, **backbone_overrides)
    detector = build_detector(method, backbone, config_values).to(backbone.device)
    if own:
        detector.load_trainable_state_dict(payload["state_dict"])
    else:
        detector.load_official_checkpoint(payload)
    detector.eval()
    logger.info("Loaded %s detector from %s", method, checkpoint)
    if calibration is not None:
        attach_calibration(detector, calibration)
    elif sidecar_path(checkpoint).is_file():
        attach_calibration(detector, sidecar_path(checkpoint), required=False)
    return detector


def initialise_from_checkpoint(detector: AnomalyDetector, path: str | os.PathLike) -> None:
    """Start training from the learnt weights of a checkpoint of the same method (ours or the
    reference format), e.g. to fine-tune a released model on a new dataset's training split.
    The detector keeps its own configuration; the file's weights must fit it."""
    method, payload, own = identify_checkpoint(path)
    if method != detector.method_name:
        raise ValueError(f"--init_checkpoint {path} holds a {method} model, but this run trains {detector.method_name}")
    if own:
        detector.load_trainable_state_dict(payload["state_dict"])
    else:
        detector.load_official_checkpoint(payload)
    logger.info("Initialised the trainable parts from %s", path)
