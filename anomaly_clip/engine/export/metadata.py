"""What an exported ONNX file says about itself: the model's ``metadata_props``.

Every value is a JSON text (numbers, booleans, lists, objects, ``null``), so any runtime reads it
with one JSON parser: ONNX Runtime's ``session.get_modelmeta().custom_metadata_map`` in Python,
C++ or C#. The keys are listed in ``docs/export.md``.
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

from ...extras import require

FORMAT_NAME = "anomaly_clip.onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("scores", "maps")
PRECISIONS = ("fp32", "fp16")


@dataclass
class ExportMetadata:
    """Facts of an exported graph ``images (B, 3, S, S) -> scores (B,), maps (B, S, S)``.

    ``mean``/``std``: the per-channel normalisation the images must have had (after a bicubic
    resize to ``image_size`` and scaling to [0, 1]). ``class_name``: the class whose text is in the
    graph (None: the method's default); ``class_text``: what that text encodes (AA-CLIP's class
    description; None when the method's text does not depend on the class). ``precision``: of the
    weights and backbone arithmetic (inputs and outputs are float32 either way).
    ``weights_sha256``: :func:`~anomaly_clip.engine.calibration.weights_fingerprint` of the learnt
    weights, which a calibration made for them records too. ``calibration``:
    :meth:`Calibration.to_dict` when the model was calibrated at export time.
    """

    method: str
    image_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    class_name: Optional[str]
    class_text: Optional[str]
    precision: str
    weights_sha256: str
    random_init: bool
    method_config: Dict[str, Any]
    backbone_config: Dict[str, Any]
    calibration: Optional[Dict[str, Any]] = None
    library_version: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.image_size = int(self.image_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        for name in ("method_config", "backbone_config", "calibration"):  # as JSON gives them back (lists)
            setattr(self, name, json.loads(json.dumps(getattr(self, name))))

    def to_properties(self) -> Dict[str, str]:
        """Key -> JSON text, the format name and version first."""
        values = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **asdict(self)}
        return {key: json.dumps(value, sort_keys=True) for key, value in values.items()}

    @classmethod
    def from_properties(cls, properties: Mapping[str, str], source: str | os.PathLike = "the model"
                        ) -> "ExportMetadata":
        """Parse :meth:`to_properties`' output; a file of another origin or a newer format is a
        ``ValueError`` naming ``source``."""
        if properties.get("format") != json.dumps(FORMAT_NAME):
            raise ValueError(f"{source} is not an ONNX model exported by anomaly_clip (no metadata "
                             f"'format': {FORMAT_NAME!r}); export it with 'anomaly-clip export'")
        try:
            values = {key: json.loads(text) for key, text in properties.items()}
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: unreadable anomaly_clip metadata: {error}") from error
        version = values.pop("format_version", None)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"{source} was exported by a newer anomaly_clip (metadata format {version}); "
                             "update anomaly_clip to read it")
        names = {field.name for field in fields(cls)}
        required = {field.name for field in fields(cls) if field.default is MISSING}
        missing = sorted(required - set(values))
        if missing:
            raise ValueError(f"{source}: anomaly_clip metadata lacks {missing}")
        return cls(**{key: value for key, value in values.items() if key in names})


def read_metadata(path: str | os.PathLike) -> ExportMetadata:
    """The :class:`ExportMetadata` of an ONNX file (read with ``onnx``, weights not loaded)."""
    (onnx,) = require("export", "onnx")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise various types
        raise ValueError(f"{path} is not a readable ONNX file: {error}") from error
    return ExportMetadata.from_properties({p.key: p.value for p in model.metadata_props}, path)
