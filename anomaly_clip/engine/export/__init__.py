"""Deployment: a trained detector as one ONNX graph, and that graph on ONNX Runtime.

``export_onnx(detector, "model.onnx", class_name=...)`` writes the detector's ``forward``,
``images (B, 3, S, S) -> scores (B,), maps (B, S, S)``, with its metadata (:mod:`.metadata`);
``load_onnx("model.onnx")`` runs it in the same inference path as a PyTorch detector
(:mod:`.runtime`). Both need the ``export`` extra (``pip install -e ".[export]"``); see
``docs/export.md``. Names load on first use.
"""
from ...lazy import lazy_exports

_EXPORTS = {
    "FLOAT32_TOLERANCE": "graph", "HALF_TOLERANCE": "graph", "DetectorGraph": "graph", "ExportResult": "graph",
    "check_exportable": "graph", "export_onnx": "graph", "exportable_methods": "graph",
    "output_tolerances": "graph", "FORMAT_NAME": "metadata", "FORMAT_VERSION": "metadata", "INPUT_NAME": "metadata",
    "OUTPUT_NAMES": "metadata", "ExportMetadata": "metadata", "read_metadata": "metadata",
    "OnnxDetector": "runtime", "execution_providers": "runtime", "load_onnx": "runtime",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
