"""anomaly_clip: zero-shot anomaly detection with CLIP — AnomalyCLIP and AA-CLIP, faithful and fast.

Typical use::

    import anomaly_clip
    anomaly_clip.list_methods()                          # ['anomalyclip', 'aaclip', ...]
    model = anomaly_clip.load("checkpoints/epoch_15.pth")
    prediction = anomaly_clip.Inferencer(model).predict_paths(["part.png"])
    anomaly_clip.export_onnx(model, "model.onnx")          # needs pip install -e ".[export]"
    prediction = anomaly_clip.Inferencer(anomaly_clip.load_onnx("model.onnx")).predict_paths(["part.png"])

    detector = anomaly_clip.create_detector("aaclip")    # official settings, pretrained CLIP
    anomaly_clip.fit(detector, "data/mvtec", anomaly_clip.TrainConfig(save_path="runs/aaclip"))

Names are imported on first use, so ``import anomaly_clip`` (and the command line's ``--help``)
starts without torch.
"""
from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "list_methods": "api", "create_detector": "api", "load": "api", "fit": "api", "load_backbone": "api",
    "BackboneConfig": "clip.config", "CLIPBackbone": "clip.backbone", "WeightsNotFoundError": "clip.weights",
    "InvalidWeightsError": "clip.weights", "DPAMConfig": "clip.dpam", "encode_image": "clip.dpam",
    "AnomalyDetector": "engine.detector", "Prediction": "engine.detector", "MethodConfig": "engine.config",
    "TrainConfig": "engine.config", "TrainingData": "engine.training", "TrainResult": "engine.training",
    "Calibration": "engine.calibration", "Inferencer": "engine.inference", "save_checkpoint": "engine.checkpoint",
    "evaluate": "engine.evaluation", "get_method": "methods", "METHODS": "methods",
    "export_onnx": "engine.export", "load_onnx": "engine.export",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
