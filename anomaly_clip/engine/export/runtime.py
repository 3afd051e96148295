"""An exported model on ONNX Runtime, with the face of a detector for the one inference path.

:class:`OnnxDetector` has what :func:`anomaly_clip.engine.inference.iterate_batches`,
:func:`~anomaly_clip.engine.inference.predict_files` and :class:`~anomaly_clip.engine.inference.Inferencer`
ask of a detector (image size, device, method name, calibration, ``model(images, class_names) ->
Prediction``, the method's per-image score rule), so file reading, maps at the original
resolution, the post-processor (:class:`~anomaly_clip.engine.calibration.Calibration`: per-image
score, thresholds), overlays and the CSV are the same code as with PyTorch.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ...clip.config import RANDOM_WEIGHTS_WARNING
from ...extras import require
from ..calibration import Calibration, attach_calibration, check_inference_settings
from ..detector import AnomalyDetector, Prediction
from ..registry import find_method
from .metadata import INPUT_NAME, OUTPUT_NAMES, ExportMetadata

logger = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
Provider = Union[str, tuple]


def execution_providers(device: str | torch.device = "auto") -> List[Provider]:
    """ONNX Runtime providers for ``device``: ``auto`` is CUDA when this onnxruntime has it (the
    ``onnxruntime-gpu`` package), else the CPU; ``cuda[:N]`` requires it; ``cpu`` is the CPU."""
    (ort,) = require("export", "onnxruntime")
    available = ort.get_available_providers()
    device = str(device)
    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "auto":
        return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]
    if device.startswith("cuda"):
        if CUDA_PROVIDER not in available:
            raise ValueError(f"--device {device}: this onnxruntime cannot use CUDA (providers {available}); "
                             "install onnxruntime-gpu instead of onnxruntime, or use --device cpu")
        return [(CUDA_PROVIDER, {"device_id": torch.device(device).index or 0}), CPU_PROVIDER]
    raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")


class OnnxDetector:
    """A model written by :func:`~anomaly_clip.engine.export.export_onnx`, run by ONNX Runtime.

    ``model(images, class_names=None)`` scores preprocessed images like the exported detector's
    ``forward``; ``Inferencer(model).predict_paths(paths)`` scores files. ``calibration`` (a
    calibration JSON) replaces the one stored in the file; it must be of the same method and,
    when it records them, of the same weights. ``threads``: CPU threads of one inference (ONNX
    Runtime's default: one per physical core). Images are handed to ONNX Runtime from host
    memory and outputs come back as CPU tensors, whatever the execution provider.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "auto",
                 calibration: Optional[str | os.PathLike] = None, threads: Optional[int] = None):
        (ort,) = require("export", "onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        providers = execution_providers(device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise ValueError(f"{self.path} is not a model ONNX Runtime can run: {error}") from error
        self.metadata = ExportMetadata.from_properties(self.session.get_modelmeta().custom_metadata_map, self.path)
        used = self.session.get_providers()
        if providers[0] != CPU_PROVIDER and used[0] == CPU_PROVIDER:
            logger.warning("ONNX Runtime could not start CUDA for %s: running on the CPU", self.path)
        self.method = find_method(self.metadata.method)
        self.config = self.method.config_class.from_dict(self.metadata.method_config)
        stored = self.metadata.calibration
        self.calibration: Optional[Calibration] = Calibration.from_dict(stored) if stored is not None else None
        self.calibration = check_inference_settings(self, self.calibration, f"stored in {self.path}",
                                                    self.metadata.class_name, None, required=False)
        if calibration is not None:
            attach_calibration(self, calibration, fingerprint=self.metadata.weights_sha256)
            self.calibration = check_inference_settings(self, self.calibration, str(calibration),
                                                        self.metadata.class_name, None, required=True)
        logger.info("Loaded %s (%s, %s) on ONNX Runtime %s", self.path, self.method_name, self.metadata.precision,
                    used[0])
        if self.metadata.random_init:
            logger.warning("%s was exported from a model with %s", self.path, RANDOM_WEIGHTS_WARNING)

    # ---- what the inference path asks of a detector ----------------------------------------------
    @property
    def method_name(self) -> str:
        return self.method.name

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @property
    def backbone_config(self) -> Dict[str, Any]:
        """The exported backbone's settings (:meth:`BackboneConfig.to_dict`, from the metadata)."""
        return self.metadata.backbone_config

    def class_text(self, class_name: Optional[str] = None) -> Optional[str]:
        """What the graph's text encodes for images of ``class_name`` (None: the exported class):
        the exported text for the exported class; the graph cannot tell another class's text,
        so another name stands for itself (``_`` read as a space) and never matches the exported
        text unless it spells it. None when the method's text does not depend on the class."""
        if self.metadata.class_text is None:
            return None
        if class_name is None or self.same_class(class_name):
            return self.metadata.class_text
        return class_name.replace("_", " ")

    def same_class(self, class_name: str) -> bool:
        """Whether ``class_name`` is the exported class (``_`` read as a space)."""
        exported = self.metadata.class_name
        return exported is not None and class_name.replace("_", " ") == str(exported).replace("_", " ")

    @property
    def device(self) -> torch.device:
        """Where images are handed over and outputs come back (ONNX Runtime reads host memory)."""
        return torch.device("cpu")

    @property
    def random_init(self) -> bool:
        """Whether the exported backbone had random weights (outputs then mean nothing)."""
        return self.metadata.random_init

    def eval(self) -> "OnnxDetector":
        return self

    def __call__(self, images: torch.Tensor, class_names: Optional[Sequence[Optional[str]]] = None) -> Prediction:
        """Scores (B,) and maps (B, S, S) float32 of preprocessed images (B, 3, S, S), as the
        exported detector's ``forward``. Class names other than the exported class are an error
        where the method's text depends on the class (its text is fixed in the graph)."""
        self.check_images(images, class_names)
        self.check_class_names(class_names)
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        scores, maps = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: array})
        return Prediction(scores=torch.from_numpy(scores), maps=torch.from_numpy(maps))

    forward = __call__

    def check_class_names(self, class_names: Optional[Sequence[Optional[str]]]) -> None:
        """``ValueError`` when images of another class than the exported one are to be scored with
        class-specific text (AA-CLIP's anchors)."""
        if self.metadata.class_text is None or class_names is None:
            return
        exported = str(self.metadata.class_name).replace("_", " ")
        others = sorted({str(name) for name in class_names if name is not None and name.replace("_", " ") != exported})
        if others:
            source = (f"class {self.metadata.class_name!r}" if self.metadata.class_name is not None
                      else "no class (the default class)")
            raise ValueError(f"{self.path} holds the text of {self.metadata.class_text!r} (exported for {source}), "
                             f"not of {others}: export again with --class_name {others[0]}")

    def image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                     statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor:
        """The method's per-image decision score (:meth:`AnomalyDetector.image_score_rule` of the
        exported settings)."""
        return self.method.detector_class.image_score_rule(self.config, scores, map_peaks, map_floors, statistics)

    # the detector's checks, shared as they are: they only use what is defined above
    check_images = AnomalyDetector.check_images
    patch_features = AnomalyDetector.patch_features

    def __repr__(self) -> str:
        return (f"OnnxDetector({str(self.path)!r}, method={self.method_name!r}, image_size={self.image_size}, "
                f"precision={self.metadata.precision!r}, providers={self.session.get_providers()})")


def load_onnx(path: str | os.PathLike, device: str | torch.device = "auto",
              calibration: Optional[str | os.PathLike] = None, threads: Optional[int] = None) -> OnnxDetector:
    """An exported ONNX model ready to score images: ``Inferencer(load_onnx("model.onnx")).predict_paths([...])``.

    ``device``: ``auto`` (CUDA when onnxruntime-gpu can use it, else CPU), ``cpu`` or ``cuda[:N]``.
    ``calibration``: a calibration JSON to use instead of the one stored at export time.
    ``threads``: CPU threads per inference (default: ONNX Runtime's choice).
    """
    return OnnxDetector(path, device=device, calibration=calibration, threads=threads)
