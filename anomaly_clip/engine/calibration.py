"""The post-processor of a trained detector: decision thresholds and score statistics, and
their storage beside its checkpoint.

A score or a map value is only useful to a user once it is turned into a decision. Thresholds
come from (a) a labelled set: the F1-max thresholds of the image scores and of the pixels,
(b) normal images only: just above a quantile ``q`` of their scores and of their maps' maxima, so
that a fraction ``q`` of such images is called normal and gets an empty mask (``q = 1``: all of
them, :func:`quantile_threshold`), or
(c) by hand. They are stored as a JSON sidecar, ``<checkpoint>.calibration.json``, which
:func:`anomaly_clip.load` reads, together with the method's score statistics (constants for the
per-image score, see :meth:`AnomalyDetector.image_scores`), the range of the calibration maps
(a fixed colour scale for overlays) and where they came from.

Decisions are ``score >= image_threshold`` and ``map >= pixel_threshold``. Pixel thresholds are
found on maps at model resolution and applied to maps upsampled to the original resolution. A
NaN or infinite score or map value is never decided on (:class:`NonFiniteError`).

A calibration also records the inference settings that set the scale of the scores: image size,
backbone (:data:`BACKBONE_SCORE_SETTINGS`), the class names whose text the detector used (for detectors whose outputs depend on them, see
:meth:`~anomaly_clip.engine.detector.AnomalyDetector.class_text`) and the normal references fused
in (their images and weight). Used with other settings, its thresholds would decide on another
scale: :func:`check_inference_settings` refuses an explicitly given calibration and leaves a
sidecar unused, with a warning, as :func:`attach_calibration` does for other weights; the PyTorch
detector, an exported graph on ONNX Runtime and ``export`` all apply it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ..clip.config import RANDOM_WEIGHTS_WARNING
from ..data.records import Sample
from ..files import atomic_path
from ..metrics import binary_f1_max_threshold

if TYPE_CHECKING:
    from .detector import AnomalyDetector

logger = logging.getLogger(__name__)

FORMAT_NAME = "anomaly_clip.calibration"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".calibration.json"
RULES = ("f1-max", "normal-quantile", "manual")


def sidecar_path(checkpoint: str | os.PathLike) -> Path:
    """Where :func:`anomaly_clip.load` looks for the calibration of ``checkpoint`` (file or folder)."""
    return Path(str(checkpoint).rstrip("/\\") + SIDECAR_SUFFIX)


@dataclass
class Decision:
    """Normal (False) / anomalous (True) per image, and per pixel; None where no threshold is known."""

    labels: Optional[torch.Tensor]
    masks: Optional[Union[torch.Tensor, List[torch.Tensor]]]


class NonFiniteError(ValueError):
    """Scores or maps hold NaN or infinite values, on which no decision is made."""


def non_finite_count(values: torch.Tensor | Sequence[torch.Tensor]) -> Tuple[int, int]:
    """(items holding a NaN or infinite value, items): per score, or per map of a (B, H, W) tensor / list."""
    if isinstance(values, torch.Tensor) and values.ndim <= 1:
        return int((~torch.isfinite(values)).sum()), values.numel()
    bad = sum(int(not bool(torch.isfinite(item).all())) for item in values)
    return bad, len(values)


def require_finite(values: torch.Tensor | Sequence[torch.Tensor], what: str) -> None:
    """:class:`NonFiniteError` when any of ``values`` (scores, or maps) is NaN or infinite."""
    bad, total = non_finite_count(values)
    if bad:
        raise NonFiniteError(f"{bad} of {total} {what} are NaN or infinite: no decision is made on them (a diverged "
                             "model, or float16 overflow: try --precision fp32)")


def decide(scores: torch.Tensor, maps: Optional[Union[torch.Tensor, List[torch.Tensor]]],
           image_threshold: Optional[float], pixel_threshold: Optional[float]) -> Decision:
    """Labels ``score >= image_threshold`` (B,) and masks ``map >= pixel_threshold`` (a (B, H, W)
    tensor or a list of maps), compared in float64; None where a threshold (or the maps) is missing.
    Raises :class:`NonFiniteError` for a NaN or infinite score (or map value, when masks are
    asked for): it would otherwise silently become "normal"."""
    labels = None
    if image_threshold is not None:
        require_finite(scores, "image scores")
        labels = scores.double() >= image_threshold
    masks = None
    if pixel_threshold is not None and maps is not None:
        require_finite(maps, "anomaly maps")
        masks = [m.double() >= pixel_threshold for m in maps] if isinstance(maps, list) else \
            maps.double() >= pixel_threshold
    return Decision(labels=labels, masks=masks)


def degenerate_statistics(statistics: Mapping[str, float]) -> Optional[str]:
    """Why score statistics cannot be used, or None: a NaN/infinite value, or a ``<name>_low`` /
    ``<name>_high`` range that is empty (one calibration image, or copies of one), which would
    rescale every later score to -inf, NaN or +inf."""
    for name, value in statistics.items():
        if not math.isfinite(float(value)):
            return f"{name} is {value}"
    for name, low in statistics.items():
        high_name = name[:-len("_low")] + "_high" if name.endswith("_low") else None
        if high_name in statistics and not float(statistics[high_name]) > float(low):
            return (f"{name} = {high_name} = {float(low):.6g}: every calibration image gave the same value (one "
                    "image, or copies of one)")
    return None


@dataclass
class Calibration:
    """The post-processor of one detector: its thresholds (None where unknown), the statistics of
    its per-image score rule, the overlay colour range, and what they were derived from.

    The detector only scores; :meth:`image_scores` applies the method's per-image rule with these
    statistics and :meth:`decide` turns scores and maps into labels and masks.
    """

    method: str
    image_threshold: Optional[float] = None
    pixel_threshold: Optional[float] = None
    rule: str = "manual"
    score_statistics: Dict[str, float] = field(default_factory=dict)
    map_range: Optional[Tuple[float, float]] = None
    provenance: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"calibration rule must be one of {RULES}, got {self.rule!r}")
        for name in ("image_threshold", "pixel_threshold"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        problem = degenerate_statistics(self.score_statistics)
        if problem is not None:
            raise ValueError(f"unusable score statistics ({problem}); calibrate on several different images")
        if self.map_range is not None:
            low, high = (float(v) for v in self.map_range)
            if not high > low:
                raise ValueError(f"map_range must be increasing, got {self.map_range}")
            self.map_range = (low, high)

    def with_thresholds(self, image_threshold: Optional[float] = None, pixel_threshold: Optional[float] = None,
                        map_range: Optional[Sequence[float]] = None) -> "Calibration":
        """A copy with the given thresholds (and overlay colour range) replacing the stored ones:
        values set by hand win."""
        changes: Dict[str, Any] = {}
        if image_threshold is not None:
            changes["image_threshold"] = float(image_threshold)
        if pixel_threshold is not None:
            changes["pixel_threshold"] = float(pixel_threshold)
        if map_range is not None:
            changes["map_range"] = tuple(float(v) for v in map_range)
        return replace(self, **changes)

    def image_scores(self, detector: "AnomalyDetector", scores: torch.Tensor, map_peaks: torch.Tensor,
                     map_floors: torch.Tensor) -> torch.Tensor:
        """Per-image decision scores (B,) float32: the detector's rule
        (:meth:`~anomaly_clip.engine.detector.AnomalyDetector.image_scores`) with these statistics."""
        return detector.image_scores(scores, map_peaks, map_floors, self.score_statistics or None).float()

    def decide_images(self, scores: torch.Tensor) -> Optional[torch.Tensor]:
        """``score >= image_threshold`` (compared in float64, as the stored threshold), None without one."""
        return decide(scores, None, self.image_threshold, None).labels

    def decide(self, prediction: Any) -> Decision:
        """Labels and masks of a :class:`~anomaly_clip.engine.detector.Prediction` (None where no
        threshold is known)."""
        return decide(prediction.scores, prediction.maps, self.image_threshold, self.pixel_threshold)

    @property
    def class_name(self) -> Optional[str]:
        """The class name predictions default to: the one calibrated with ``--class_name``, else the
        only class of the calibration set (None for several)."""
        named = self.provenance.get("class_name")
        if named:
            return named
        names = self.provenance.get("class_names") or []
        return names[0] if len(names) == 1 else None

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready content; a calibration of a random-weights backbone is headed by a ``warning``."""
        values = asdict(self)
        values["map_range"] = list(self.map_range) if self.map_range is not None else None
        warning = {"warning": RANDOM_WEIGHTS_WARNING} if self.provenance.get("random_init") else {}
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **warning, **values}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "Calibration":
        values = dict(values)
        if values.pop("format", None) != FORMAT_NAME:
            raise ValueError("not an anomaly_clip calibration (missing 'format': "
                             f"{FORMAT_NAME!r})")
        if values.pop("version", 0) > FORMAT_VERSION:
            raise ValueError("calibration written by a newer anomaly_clip")
        values.pop("warning", None)
        if values.get("map_range") is not None:
            values["map_range"] = tuple(values["map_range"])
        return cls(**values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, all or nothing (see :mod:`anomaly_clip.files`)."""
        path = Path(path)
        with atomic_path(path) as temporary:
            temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Calibration":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"cannot read calibration {path}: {error}") from error


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of learnt weights (names, dtypes, shapes, values): ties a calibration to the exact
    model it was measured on, whatever file format the weights came from."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state[name].shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def attach_calibration(detector: "AnomalyDetector", path: str | os.PathLike, required: bool = True,
                       fingerprint: Optional[str] = None) -> Optional[Calibration]:
    """Read the calibration at ``path`` into ``detector.calibration``. It must be of the same
    method and, when it records one, of the same weights (``fingerprint``, by default that of
    ``detector.trainable_state_dict()``): a mismatch is an error when the file was asked for
    (``required``) and a warning, the file left unused, when it was only found beside the
    checkpoint (e.g. a folder retrained after calibrating)."""
    try:
        calibration = Calibration.read(path)
    except ValueError as error:
        if required:
            raise
        logger.warning("%s; not using it (calibrate again)", error)
        return None
    problem = None
    if calibration.method != detector.method_name:
        problem = f"calibration {path} is for {calibration.method}, not {detector.method_name}"
    else:
        recorded = calibration.provenance.get("weights_sha256")
        if recorded and recorded != (fingerprint or weights_fingerprint(detector.trainable_state_dict())):
            problem = f"calibration {path} was made for other weights than those loaded"
    if problem is not None:
        if required:
            raise ValueError(problem)
        logger.warning("%s; not using it (calibrate again)", problem)
        return None
    detector.calibration = calibration
    logger.info("Calibration from %s: image threshold %s, pixel threshold %s (%s)", path,
                calibration.image_threshold, calibration.pixel_threshold, calibration.rule)
    return calibration


def references_record(sources: Mapping[str, Sequence[str]], weight: float) -> Dict[str, Any]:
    """What a calibration records of the normal references fused in: their weight, count and a
    SHA-256 of their (class, absolute path) pairs (the same images give the same record, whether
    given as a folder or a saved memory bank)."""
    pairs = sorted((str(name), os.path.abspath(path)) for name, paths in sources.items() for path in paths)
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()
    return {"weight": float(weight), "images": len(pairs), "sha256": digest}


BACKBONE_SCORE_SETTINGS = ("model_name", "pretrained", "random_init", "activation", "pos_embed_interpolation")
"""The backbone settings that change scores and that a calibration is compared on (the image size is
compared on its own; a weights file's path is not comparable across machines)."""


def inference_differences(calibration: Calibration, detector: Any, class_name: Optional[str],
                          references: Optional[Mapping[str, Any]]) -> List[str]:
    """How the settings of a prediction (image size, backbone, class name, normal references) differ
    from those ``calibration`` was made with, as phrases; empty when its thresholds apply.

    ``detector``: an :class:`~anomaly_clip.engine.detector.AnomalyDetector` or an exported model
    (:class:`~anomaly_clip.engine.export.OnnxDetector`); both give ``image_size``,
    ``backbone_config`` (a :meth:`BackboneConfig.to_dict`) and ``class_text(name)``. The backbone
    is compared on :data:`BACKBONE_SCORE_SETTINGS`, only when the calibration records it
    (``backbone_config``, absent from calibrations written before it was recorded)."""
    record = calibration.provenance
    differences = []
    size = record.get("image_size")
    if size is not None and int(size) != detector.image_size:
        differences.append(f"image size {detector.image_size} (calibrated at {size})")
    recorded_backbone = record.get("backbone_config")
    if recorded_backbone:
        current = detector.backbone_config
        for name in BACKBONE_SCORE_SETTINGS:
            if name in recorded_backbone and recorded_backbone[name] != current.get(name):
                differences.append(f"backbone {name} {current.get(name)!r} (calibrated with {recorded_backbone[name]!r})")
    key = detector.class_text(class_name)
    names = record.get("class_names") or ([record["class_name"]] if record.get("class_name") else [])
    if key is not None and names and key not in {detector.class_text(name) for name in names}:
        shown = repr(class_name) if class_name else "no class name (the generic class)"
        differences.append(f"{shown} (calibrated on {', '.join(map(repr, names))})")
    recorded = record.get("references")
    if (recorded is None) != (references is None):
        differences.append("normal references fused in (calibrated without)" if recorded is None
                           else "no normal references (calibrated with them fused in)")
    elif recorded is not None and (float(recorded.get("weight", -1)) != float(references["weight"])
                                   or recorded.get("sha256") != references.get("sha256")):
        differences.append(f"normal references: {references['images']} images, weight {references['weight']:g} "
                           f"(calibrated with other ones: {recorded.get('images')} images, weight "
                           f"{recorded.get('weight')})")
    return differences


def check_inference_settings(detector: Any, calibration: Optional[Calibration], source: str,
                             class_name: Optional[str], references: Optional[Mapping[str, Any]],
                             required: bool) -> Optional[Calibration]:
    """``calibration`` when it was made with the settings of this prediction (:func:`inference_differences`;
    ``detector`` a detector or an exported model), else (see the module docstring) a :class:`ValueError` when it was asked for (``required``), or None with a warning
    when it was only found beside the checkpoint."""
    if calibration is None:
        return None
    differences = inference_differences(calibration, detector, class_name, references)
    if not differences:
        return calibration
    problem = (f"calibration {source} was made with other inference settings than this prediction's: "
               f"{'; '.join(differences)}; its thresholds and score ranges belong to another score scale")
    if required:
        raise ValueError(f"{problem}. Calibrate again with the same settings (calibrate takes the same "
                         "--class_name and --reference_images flags), or drop --calibration")
    logger.warning("%s; not using it (calibrate again with the same settings)", problem)
    return None


def note_class_choice(detector: "AnomalyDetector", class_name: Optional[str]) -> None:
    """Warn when a detector whose outputs depend on the class name gets none: say which text it
    uses instead and, when its checkpoint records them, which classes it was trained on."""
    key = detector.class_text(class_name)
    if class_name or key is None:
        return
    trained = detector.trained_class_names
    if trained and key in {detector.class_text(name) for name in trained}:
        return
    known = f"; it was trained on {', '.join(map(repr, trained))}" if trained else ""
    logger.warning("No class name given: %s scores with the anchors of the generic class (%r)%s. Pass --class_name "
                   "NAME (the class of these images) for its own anchors", detector.method_name, key, known)


@dataclass
class CalibrationOutputs:
    """Raw outputs of a detector over a calibration set (maps and masks on the host, float32 / bool)."""

    scores: torch.Tensor
    map_peaks: torch.Tensor
    map_floors: torch.Tensor
    labels: torch.Tensor
    maps: Optional[torch.Tensor]
    masks: Optional[torch.Tensor]
    class_names: List[str]


RESCORE_TOLERANCE = 1e-6
"""Relative margin of a normal-quantile threshold above its quantile value: an image scores the
same in another batch only to float rounding (5e-7 relative measured, README), so without it the
image at the quantile could flip to anomalous when scored again."""


def quantile_value(values: torch.Tensor, q: float) -> float:
    """The smallest value at or above a fraction ``q`` of ``values`` (``q = 1``: the maximum)."""
    if not 0.0 < q <= 1.0:
        raise ValueError(f"the quantile must lie in (0, 1], got {q}")
    flat = values.reshape(-1)
    if flat.numel() == 0:
        raise ValueError("no values to take a quantile of")
    rank = min(max(math.ceil(q * flat.numel()), 1), flat.numel())
    return float(flat.kthvalue(rank).values)


def quantile_threshold(values: torch.Tensor, q: float) -> float:
    """A threshold calling a fraction ``q`` of ``values`` normal under ``value >= threshold``:
    just above :func:`quantile_value` (by :data:`RESCORE_TOLERANCE` relative, at least one float64
    step), so the value at the quantile itself is normal (``q = 1``: every calibration image)."""
    value = quantile_value(values, q)
    return max(math.nextafter(value, math.inf), value + RESCORE_TOLERANCE * abs(value))


def calibrate(detector: "AnomalyDetector", outputs: CalibrationOutputs, normal_quantile: Optional[float] = None,
              provenance: Optional[Dict[str, Any]] = None) -> Calibration:
    """Thresholds from a detector's outputs: F1-max on a labelled set, or the ``normal_quantile``
    of the normal images' per-image scores and map maxima."""
    bad, total = non_finite_count(outputs.scores)
    bad_maps = int((~torch.isfinite(outputs.map_peaks) | ~torch.isfinite(outputs.map_floors)).sum())
    if bad or bad_maps:
        raise NonFiniteError(f"cannot calibrate: {max(bad, bad_maps)} of {total} images have NaN or infinite scores "
                             "or maps (a diverged model, or float16 overflow: try --precision fp32)")
    statistics = detector.score_statistics(outputs.scores, outputs.map_peaks, outputs.map_floors)
    problem = degenerate_statistics(statistics)
    if problem is not None:
        raise ValueError(f"cannot calibrate {detector.method_name} on these {total} images: its score ranges are "
                         f"empty ({problem}); calibrate on several different images")
    scores = detector.image_scores(outputs.scores, outputs.map_peaks, outputs.map_floors, statistics).float()
    labels = outputs.labels
    normal = ~labels
    used = scores[normal] if normal_quantile is not None else scores
    if used.numel() and float(used.max() - used.min()) <= RESCORE_TOLERANCE * float(used.abs().max()):
        logger.warning("The %d calibration images %sgive a single distinct score (%.6g; one image, or copies of one): "
                       "the threshold says nothing of how the scores of other images spread; calibrate on several "
                       "different images", used.numel(), "used for the quantile " if normal_quantile is not None
                       else "", float(used[0]))
    record: Dict[str, Any] = {
        "num_images": int(labels.numel()), "num_anomalous": int(labels.sum()), "class_names": outputs.class_names,
        "random_init": bool(detector.backbone.config.random_init), "model_name": detector.backbone.config.model_name,
        "image_size": detector.image_size, "backbone_config": detector.backbone.config.to_dict(), "weights_sha256": weights_fingerprint(detector.trainable_state_dict()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if normal_quantile is not None:
        if not bool(normal.any()):
            raise ValueError("--normal-quantile needs normal images (label 0) in the calibration set")
        image_threshold = quantile_threshold(scores[normal], normal_quantile)
        pixel_threshold = quantile_threshold(outputs.map_peaks[normal], normal_quantile)
        rule = "normal-quantile"
        record["quantile"] = normal_quantile
    else:
        if bool(labels.all()) or not bool(labels.any()):
            raise ValueError("F1-max thresholds need both normal and anomalous images; with normal images only, "
                             "use --normal-quantile")
        image_f1, image_threshold = binary_f1_max_threshold(scores, labels)
        record["image_f1_max"] = image_f1
        pixel_threshold = None
        if outputs.maps is not None and outputs.masks is not None and bool(outputs.masks.any()):
            pixel_f1, pixel_threshold = binary_f1_max_threshold(outputs.maps.reshape(-1), outputs.masks.reshape(-1))
            record["pixel_f1_max"] = pixel_f1
        else:
            logger.warning("The calibration set has no anomalous pixels annotated: no pixel threshold")
        rule = "f1-max"
    record.update(provenance or {})
    map_range = (float(outputs.map_floors.min()), float(outputs.map_peaks.max()))
    calibration = Calibration(
        method=detector.method_name, image_threshold=image_threshold, pixel_threshold=pixel_threshold, rule=rule,
        score_statistics=statistics, map_range=map_range if map_range[1] > map_range[0] else None,
        provenance=record)
    logger.info("Calibrated %s (%s on %d images): image threshold %.6g, pixel threshold %s", detector.method_name,
                rule, record["num_images"], image_threshold,
                "none" if pixel_threshold is None else f"{pixel_threshold:.6g}")
    return calibration


def image_level_samples(paths: Sequence[str | os.PathLike], class_name: Optional[str]) -> List[Sample]:
    """Normal-image samples for a list of files (calibration on one's own good parts)."""
    return [Sample(image_path=str(Path(p).resolve()), label=0, class_name=class_name or "object") for p in paths]
