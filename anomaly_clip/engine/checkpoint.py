"""Checkpoints: our self-describing format, the official formats, :func:`create_detector` and :func:`load`.

Our files hold the method name, its config and the backbone config beside the trainable
weights, so evaluation needs no repeated architecture flags. Files written by the official
code are recognised by each method's ``official.py`` and loaded into the same classes. A
checkpoint is read once (:func:`identify_checkpoint`), however many places need it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch

from ..clip.backbone import BackboneConfig, CLIPBackbone, load_backbone
from ..files import atomic_path, read_torch_file
from .calibration import attach_calibration, sidecar_path
from .config import MethodConfig
from .detector import AnomalyDetector
from .registry import find_method, registered_methods

logger = logging.getLogger(__name__)

FORMAT_NAME = "anomaly_clip"
FORMAT_VERSION = 1


def atomic_save(payload: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`anomaly_clip.files.atomic_path`: an interrupted run or a full
    disk never leaves a truncated checkpoint under ``path`` (an earlier file there stays intact);
    a full disk is one :class:`OSError` naming the file and the free space."""
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


def read_checkpoint(path: str | os.PathLike, role: str = "checkpoint") -> Dict[str, Any]:
    """The dictionary in the torch file ``path``, read weights-only
    (:func:`anomaly_clip.files.read_torch_file`: tensors and plain containers, never code); a
    missing, refused, unreadable or non-dictionary file is an error naming it."""
    path = Path(path)
    checkpoint = read_torch_file(path, role)
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a {role} dictionary")
    return checkpoint


def is_own_format(checkpoint: Dict[str, Any]) -> bool:
    return checkpoint.get("format") == FORMAT_NAME


@dataclass
class CheckpointFile:
    """A checkpoint read once: its method, contents (ours, or the official files' payload), and
    whether it is in our format. :func:`load` accepts it in place of the path."""

    path: str
    method: str
    payload: Dict[str, Any]
    own: bool

    def __iter__(self):
        return iter((self.method, self.payload, self.own))


def identify_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Read a checkpoint file or an official folder once and find its method: our format by its
    marker, else the first registered method whose official reader recognises the contents."""
    location = Path(path)
    contents = read_checkpoint(location) if location.is_file() else None
    if contents is not None and is_own_format(contents):
        if contents.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer anomaly_clip (format {contents['version']})")
        return CheckpointFile(str(path), contents["method"], contents, True)
    for method in registered_methods():
        official = method.detector_class.read_official_checkpoint(str(path), contents)
        if official is not None:
            return CheckpointFile(str(path), method.name, official, False)
    if contents is None:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    raise ValueError(
        f"{path} is neither an anomaly_clip checkpoint nor a known official one "
        f"(top-level keys: {sorted(contents)[:10]})"
    )


def create_detector(method: str, backbone: Optional[CLIPBackbone | BackboneConfig] = None,
                    config: Optional[MethodConfig | Mapping[str, Any]] = None,
                    device: Optional[torch.device | str] = None, **overrides: Any) -> AnomalyDetector:
    """A fresh detector of ``method`` (untrained parts initialised from the global RNG), in eval mode.

    ``backbone``: a loaded :class:`CLIPBackbone`, a :class:`BackboneConfig` to load (on
    ``device``), or None for the method's default backbone (its official settings, pretrained
    weights). ``config``: the method's config dataclass or a mapping of its fields (former
    names accepted), updated by keyword ``overrides``; None means the official defaults.

    >>> det = create_detector("anomalyclip", backbone=load_backbone(model_name="anomaly-clip-tiny",
    ...                       random_init=True, image_size=112))  # doctest: +SKIP
    >>> det(torch.randn(2, 3, 112, 112)).maps.shape  # doctest: +SKIP
    torch.Size([2, 112, 112])
    """
    spec = find_method(method)
    cls = spec.detector_class
    if isinstance(config, MethodConfig):
        values = config.to_dict()
    else:
        values = dict(config or {})
    values.update(overrides)
    method_config = spec.config_class.from_dict(values)
    if backbone is None:
        backbone = cls.default_backbone_config()
    if isinstance(backbone, BackboneConfig):
        backbone = load_backbone(backbone, device=device)
    return cls(backbone, method_config).to(backbone.device).eval()


def load(checkpoint: str | os.PathLike | CheckpointFile, device: Optional[torch.device | str] = None,
         backbone_config: Optional[BackboneConfig] = None, method_config: Optional[dict] = None,
         backbone: Optional[CLIPBackbone] = None,
         configure_backbone: Optional[Callable[[BackboneConfig], BackboneConfig]] = None,
         calibration: Optional[str | os.PathLike] = None, **backbone_overrides: Any) -> AnomalyDetector:
    """Load a trained detector from our checkpoint or from an official checkpoint, in eval mode.

    ``checkpoint`` is a path (file, or an official folder) or a :class:`CheckpointFile` already
    read. Official files carry no configuration: the method's defaults (official settings) are
    used, updated by ``method_config``. The backbone config is ``backbone_config`` if given,
    else the checkpoint's (or the method default), passed through ``configure_backbone`` and
    updated by keyword overrides (e.g. ``weights_path=..., image_size=...``). A ready
    ``backbone`` may be passed to share one across detectors. The thresholds in ``calibration``
    (a calibration JSON), else in the sidecar ``<checkpoint>.calibration.json`` when present and
    made for these weights, become ``detector.calibration``.
    """
    identified = checkpoint if isinstance(checkpoint, CheckpointFile) else identify_checkpoint(checkpoint)
    method, payload, own = identified
    cls = find_method(method).detector_class
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
    detector = cls(backbone, cls.config_class.from_dict(config_values)).to(backbone.device)
    if own:
        detector.load_trainable_state_dict(payload["state_dict"])
        detector.trained_class_names = list(payload.get("class_names") or []) or None
    else:
        detector.load_official_checkpoint(payload)
    detector.eval()
    logger.info("Loaded %s detector from %s", method, identified.path)
    sidecar = sidecar_path(identified.path)
    if calibration is not None:
        attach_calibration(detector, calibration)
    elif sidecar.is_file():
        attach_calibration(detector, sidecar, required=False)
    return detector


def other_method_error(path: str | os.PathLike, stored: str, trained: str) -> ValueError:
    """The error for an ``--init_checkpoint`` of method ``stored`` given to a run training ``trained``."""
    return ValueError(f"--init_checkpoint {path} holds a model of {stored}, but this run trains {trained}: give a "
                      f"checkpoint of {trained} or --method {stored}")


# backbone settings that change what a model learns (where the weights come from does not)
ARCHITECTURE_BACKBONE_FIELDS = ("model_name", "random_init", "activation", "image_size", "pos_embed_interpolation")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def setting_differences(stored: Mapping[str, Any], detector: AnomalyDetector) -> List[str]:
    """How the settings recorded in a checkpoint or resume file ``stored`` (its ``method_config``
    and ``backbone_config``, where present) differ from ``detector``'s: every method setting and
    the backbone's :data:`ARCHITECTURE_BACKBONE_FIELDS`, each as ``name=stored (this run: current)``.
    Raises ``TypeError``/``ValueError`` when the stored method settings do not load."""
    differences = []
    stored_config = stored.get("method_config")
    if stored_config is not None:
        recorded = type(detector.config).from_dict(stored_config).to_dict()
        current = detector.config.to_dict()
        differences += [f"{key}={_plain(recorded.get(key))!r} (this run: {_plain(current.get(key))!r})"
                        for key in sorted(current) if _plain(recorded.get(key)) != _plain(current.get(key))]
    stored_backbone = stored.get("backbone_config")
    if stored_backbone is not None:
        recorded = BackboneConfig.from_dict(stored_backbone).to_dict()
        current = detector.backbone.config.to_dict()
        differences += [f"{key}={recorded.get(key)!r} (this run: {current.get(key)!r})"
                        for key in ARCHITECTURE_BACKBONE_FIELDS if recorded.get(key) != current.get(key)]
    return differences


def initialise_from_checkpoint(detector: AnomalyDetector, path: str | os.PathLike) -> None:
    """Start training from the learnt weights of a checkpoint of the same method (ours or the
    official format), e.g. to fine-tune a released model on a new dataset's training split.

    The detector keeps its own configuration; the file's weights must fit it. Settings that
    differ from the checkpoint's but leave the weights' shapes alone are allowed; weights that do
    not fit (e.g. ``--n_ctx 4`` on a checkpoint trained with 12) are a :class:`ValueError` naming
    the file and each setting that differs from the checkpoint's recorded ones (before: a
    ``load_state_dict`` size-mismatch traceback)."""
    method, payload, own = identify_checkpoint(path)
    if method != detector.method_name:
        raise other_method_error(path, method, detector.method_name)
    try:
        if own:
            detector.load_trainable_state_dict(payload["state_dict"])
        else:
            detector.load_official_checkpoint(payload)
    except (RuntimeError, ValueError) as error:
        try:
            differences = setting_differences(payload, detector) if own else []
        except (TypeError, ValueError):
            differences = []
        if differences:
            raise ValueError(f"--init_checkpoint {path} does not fit this run: it was trained with "
                             f"{'; '.join(differences)}; train with the checkpoint's settings, or without "
                             "--init_checkpoint") from None
        if isinstance(error, ValueError):
            raise
        reason = " ".join(str(error).split())
        raise ValueError(f"--init_checkpoint {path} does not fit this run's {method} model ({reason[:300]}); train "
                         "with the settings it was trained with, or without --init_checkpoint") from None
    logger.info("Initialised the trainable parts from %s", path)
