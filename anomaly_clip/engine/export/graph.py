"""A detector's ``forward`` as one ONNX graph: ``images (B, 3, S, S) -> scores (B,), maps (B, S, S)``.

After training, an exportable method scores an image with a fixed function: the frozen CLIP
image tower (with DPAM or adapters), text features held as buffers (AnomalyCLIP's two
object-agnostic embeddings, AA-CLIP's anchors of one class), patch similarities, upsampling, the
Gaussian smoothing (a convolution with the exact kernel and reflect borders of
:mod:`anomaly_clip.engine.smoothing`) and the image score. That function is the detector's own
:meth:`~anomaly_clip.engine.detector.AnomalyDetector.forward`; :func:`export_onnx` captures it with
PyTorch's dynamo-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``), with the class
whose text the graph holds set as the detector's :attr:`default_class_name`, writes the metadata,
checks the file with ``onnx.checker`` and compares ONNX Runtime's outputs with PyTorch's.

Why the dynamo exporter: it captures the graph with ``torch.export`` and symbolic shapes, so the
batch axis stays dynamic while the Python shape arithmetic of the models (patch grid, kernel
radius, padding indices) is evaluated at export time. The TorchScript-based exporter is
deprecated since torch 2.9 and traces shapes as tensors, which that arithmetic does not accept.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Tuple

import torch
from torch import nn

from ... import __version__
from ...data.dataset import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from ...extras import MissingExtraError, require
from ...files import atomic_path
from ..calibration import check_inference_settings, weights_fingerprint
from ..detector import AnomalyDetector
from ..registry import find_method, registered_methods
from .metadata import INPUT_NAME, OUTPUT_NAMES, ExportMetadata

logger = logging.getLogger(__name__)

FLOAT32_TOLERANCE = (1e-5, 1e-4)
"""Largest |ONNX Runtime - PyTorch| accepted for (scores, maps) of a float32 export."""
HALF_TOLERANCE = (1e-3, 5e-3)
"""A ``half`` export against the float32 PyTorch model: largest |score difference|, and largest
|map difference| as a fraction of the float32 maps' spread (max - min). Measured values are in
docs/export.md."""
VERIFY_BATCH = 2
"""Random images ONNX Runtime scores at export time (as one batch, and the first alone)."""


class DetectorGraph(nn.Module):
    """What the exporter captures: ``detector(images)`` with its :class:`Prediction` as the tuple
    ``(scores (B,), maps (B, S, S))`` float32. ``dtype``: the dtype the images enter the detector
    in (its weights' dtype; inputs and outputs of the graph stay float32)."""

    def __init__(self, detector: AnomalyDetector, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.detector = detector
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        prediction = self.detector(images.to(self.dtype))
        return prediction.scores.float(), prediction.maps.float()


def exportable_methods() -> Tuple[str, ...]:
    """Names of the registered methods that declare ``exportable`` (sorted)."""
    return tuple(sorted(method.name for method in registered_methods() if method.exportable))


EXPORTER_ARGUMENTS = ("dynamo", "dynamic_shapes", "optimize")


def check_exporter() -> None:
    """:class:`~anomaly_clip.extras.MissingExtraError` unless this torch's ``torch.onnx.export``
    takes the dynamo-based exporter's arguments used here (torch 2.6 and later do)."""
    accepted = inspect.signature(torch.onnx.export).parameters
    missing = [name for name in EXPORTER_ARGUMENTS if name not in accepted]
    if missing:
        raise MissingExtraError(
            f"torch {torch.__version__} has no dynamo-based ONNX exporter taking {', '.join(missing)} "
            "(torch.onnx.export(..., dynamo=True), torch 2.6 or later): pip install -U 'torch>=2.6'", name="torch")


def check_exportable(method: str) -> None:
    """``ValueError`` in one line for a method not registered ``exportable`` (its forward is not
    one graph for any batch size; docs/export.md, Limits, says why for each)."""
    spec = find_method(method)
    if not spec.exportable:
        raise ValueError(f"{spec.name} cannot be exported to ONNX (its forward is not one graph for any batch size; "
                         f"docs/export.md, Limits); exportable methods: {', '.join(exportable_methods())}")


@contextmanager
def images_of_class(detector: AnomalyDetector, class_name: Optional[str]) -> Iterator[AnomalyDetector]:
    """``detector`` with :attr:`~AnomalyDetector.default_class_name` set to ``class_name`` (when
    given) for the duration: its ``forward(images)`` then uses that class's text."""
    previous = detector.default_class_name
    if class_name is not None:
        detector.default_class_name = class_name
    try:
        yield detector
    finally:
        detector.default_class_name = previous


def half_copy(detector: AnomalyDetector) -> AnomalyDetector:
    """A float16 copy of ``detector`` (weights and the backbone's buffers) whose own buffers, the
    frozen text features or anchors, stay float32 (the similarities are computed in float32)."""
    copied = copy.deepcopy(detector).half()
    for name, buffer in list(copied.named_buffers()):
        if not name.startswith("backbone.") and buffer.is_floating_point():
            owner, _, attribute = name.rpartition(".")
            setattr(copied.get_submodule(owner), attribute, getattr(detector.get_submodule(owner), attribute))
    return copied


def export_metadata(detector: AnomalyDetector, class_name: Optional[str], half: bool) -> ExportMetadata:
    """The facts :func:`export_onnx` writes into the file (see :class:`ExportMetadata`), for a
    detector whose :attr:`default_class_name` is already the exported class."""
    backbone = detector.backbone.config
    text = detector.class_text()
    calibration = detector.calibration
    return ExportMetadata(
        method=detector.method_name, image_size=detector.image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
        class_name=class_name if text is not None else None, class_text=text, precision="fp16" if half else "fp32",
        weights_sha256=weights_fingerprint(detector.trainable_state_dict()), random_init=bool(backbone.random_init),
        method_config=detector.config.to_dict(), backbone_config=backbone.to_dict(),
        calibration=calibration.to_dict() if calibration is not None else None, library_version=__version__)


def output_tolerances(maps: torch.Tensor, half: bool) -> Tuple[float, float]:
    """Accepted |score| and |map| differences from the float32 PyTorch outputs (``maps``)."""
    if not half:
        return FLOAT32_TOLERANCE
    return HALF_TOLERANCE[0], HALF_TOLERANCE[1] * float(maps.amax() - maps.amin())


@dataclass
class ExportResult:
    """Where the graph went, what it says about itself, and the largest differences between ONNX
    Runtime and the float32 PyTorch model on ``VERIFY_BATCH`` random images (and the accepted ones)."""

    path: Path
    metadata: ExportMetadata
    score_difference: float
    map_difference: float
    tolerance: Tuple[float, float]

    @property
    def within_tolerance(self) -> bool:
        return self.score_difference <= self.tolerance[0] and self.map_difference <= self.tolerance[1]


def export_onnx(detector: AnomalyDetector, path: str | os.PathLike, class_name: Optional[str] = None,
                half: bool = False, opset_version: Optional[int] = None) -> ExportResult:
    """Write ``detector.forward`` for images of ``class_name`` as one ONNX graph.

    Input ``images`` (B, 3, S, S) float32, CLIP-normalised as for :meth:`AnomalyDetector.forward`,
    B dynamic; outputs ``scores`` (B,) and ``maps`` (B, S, S) float32, equal to ``forward``'s (the
    raw detector outputs: the calibration's per-image score rule and thresholds apply after the
    graph, see :class:`~anomaly_clip.engine.calibration.Calibration`). ``class_name`` chooses the
    text the graph holds where it depends on the class (AA-CLIP's anchors; None: the method's
    default, the generic class). ``half`` stores the weights and runs the detector in float16
    (similarities and smoothing stay float32). The detector's calibration goes into the metadata.
    The file is written all or nothing, after ``onnx.checker`` accepted it and ONNX Runtime
    reproduced PyTorch within :func:`output_tolerances` (a warning otherwise).

    Raises ``ValueError`` for a method that is not exportable, a detector holding normal
    references (WinCLIP+, APRIL-GAN's memory) or a class it cannot score, a calibration made with
    other inference settings than the graph's (image size, backbone, class, normal references:
    :func:`~anomaly_clip.engine.calibration.check_inference_settings`),
    :class:`~anomaly_clip.extras.MissingExtraError` without the ``export`` extra or with a torch
    older than the dynamo-based exporter (:func:`check_exporter`), ``RuntimeError``
    if the exporter fixed the batch axis (nothing is written then).
    """
    onnx, _, _ = require("export")
    check_exporter()
    check_exportable(detector.method_name)
    if getattr(detector, "references", None) is not None:
        raise ValueError(f"{detector.method_name} holds normal references (few-shot memory), which are not exported: "
                         "export the zero-shot model, without references")
    detector.eval()
    size = detector.image_size
    example = torch.randn(VERIFY_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    example = example.to(detector.device)
    with images_of_class(detector, class_name), torch.no_grad():
        text = detector.class_text()
        if text is not None and class_name is None:
            logger.warning("No class name given: the graph holds the text of %r, the default class; export with "
                           "a class name (--class_name) for a product's own text", text)
        elif text is None and class_name is not None:
            logger.info("%s's text does not depend on the class: class name %r not needed", detector.method_name,
                        class_name)
        check_inference_settings(detector, detector.calibration, "of the detector", class_name, None, required=True)
        metadata = export_metadata(detector, class_name, half)
        graph = DetectorGraph(detector).eval()
        expected = graph(example)  # also computes the class's text buffers before the capture
        if half:
            graph = DetectorGraph(half_copy(detector), torch.float16).eval()
            graph(example)  # fills the half copy's caches (resized position embedding) before the capture
        program = torch.onnx.export(
            graph, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"images": {0: torch.export.Dim("batch")}}, opset_version=opset_version,
            verbose=False, optimize=True)
    program.model.metadata_props.update(metadata.to_properties())
    path = Path(path)
    with atomic_path(path) as temporary:
        program.save(temporary, external_data=False)
        onnx.checker.check_model(str(temporary), full_check=True)
        check_batch_axis(onnx.load(str(temporary), load_external_data=False), path)
        score_difference, map_difference = compare_with_runtime(temporary, example, expected)
    result = ExportResult(path, metadata, score_difference, map_difference, output_tolerances(expected[1], half))
    log_export(result)
    return result


def check_batch_axis(model, path: Path) -> None:
    """``RuntimeError`` unless the input and both outputs of the ONNX ``model`` share one symbolic
    first axis (an exporter that specialised the batch would give a graph for one batch size)."""
    values = [*model.graph.input, *model.graph.output]
    first = [value.type.tensor_type.shape.dim[0].dim_param for value in values]
    if not first[0] or len(set(first)) != 1:
        raise RuntimeError(f"the exporter fixed the batch axis of {path} ({first}); nothing written. Please "
                           "report this with the method and its settings")


def log_export(result: ExportResult) -> None:
    """Say what was written and how close ONNX Runtime came to PyTorch: a warning beyond tolerance."""
    metadata = result.metadata
    logger.log(logging.INFO if result.within_tolerance else logging.WARNING,
               "Exported %s (%s, %s) to %s (%.1f MB): ONNX Runtime vs PyTorch float32 on %d random images: "
               "max |score difference| %.2g, max |map difference| %.2g (accepted: %.2g / %.2g)", metadata.method,
               metadata.precision, f"text of {metadata.class_text!r}" if metadata.class_text else "class-agnostic text",
               result.path, result.path.stat().st_size / 1e6, VERIFY_BATCH, result.score_difference,
               result.map_difference, *result.tolerance)


def compare_with_runtime(path: Path, images: torch.Tensor, expected: Tuple[torch.Tensor, torch.Tensor]
                         ) -> Tuple[float, float]:
    """Largest |ONNX Runtime (CPU) - expected| of (scores, maps) on ``images`` as one batch and on
    the first image alone (a graph fixed to one batch size fails here)."""
    (ort,) = require("export", "onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    array = images.cpu().numpy()
    whole = session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
    single = session.run(list(OUTPUT_NAMES), {INPUT_NAME: array[:1]})
    differences = []
    for index, reference in enumerate(expected):
        reference = reference.cpu()
        differences.append(max(float((torch.from_numpy(whole[index]) - reference).abs().max()),
                               float((torch.from_numpy(single[index]) - reference[:1]).abs().max())))
    return differences[0], differences[1]
