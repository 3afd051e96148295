"""The library's entry points: list_methods, create_detector, fit, load; tensor-only forward;
settings importable without torch; every sub-command's --help without torch."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import anomaly_clip
from anomaly_clip.cli.main import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def test_list_methods_names_both_papers():
    assert {"anomalyclip", "aaclip"} <= set(anomaly_clip.list_methods())


@pytest.mark.parametrize("method", ["anomalyclip", "aaclip"])
def test_create_detector_scores_a_random_batch(tiny_backbone_112, method):
    detector = anomaly_clip.create_detector(method, backbone=tiny_backbone_112)
    assert not detector.training
    prediction = detector(torch.randn(2, 3, 112, 112))
    assert prediction.scores.shape == (2,) and prediction.maps.shape == (2, 112, 112)
    named = detector(torch.randn(2, 3, 112, 112), ["bottle", "screw"])
    assert named.maps.shape == (2, 112, 112)


def test_create_detector_takes_settings_with_former_names(tiny_backbone):
    detector = anomaly_clip.create_detector("aaclip", backbone=tiny_backbone, levels=(12, 24), image_score="detection")
    assert detector.config.features_list == (12, 24) and detector.config.image_score == "detection"
    with pytest.raises(ValueError, match="unknown AAClipConfig fields"):
        anomaly_clip.create_detector("aaclip", backbone=tiny_backbone, sigma=3.0)


def test_frozen_text_features_are_buffers_refreshed_after_loading(tiny_backbone):
    detector = anomaly_clip.create_detector("anomalyclip", backbone=tiny_backbone, n_ctx=4, depth=3, t_n_ctx=2)
    assert "frozen_text_features" in dict(detector.named_buffers())
    assert "frozen_text_features" not in detector.state_dict()
    before = detector.frozen_text_features.clone()
    state = {k: v + 0.1 if k.endswith("ctx_pos") else v for k, v in detector.trainable_state_dict().items()}
    detector.load_trainable_state_dict(state)
    assert not torch.equal(detector.frozen_text_features, before)
    with torch.no_grad():
        torch.testing.assert_close(detector.frozen_text_features, detector.prompt_learner(detector.backbone))


def test_fit_rejects_settings_of_another_method(tiny_backbone, tmp_path):
    from anomaly_clip.methods.aaclip.config import AAClipTraining

    detector = anomaly_clip.create_detector("anomalyclip", backbone=tiny_backbone)
    with pytest.raises(TypeError, match="AnomalyCLIPTraining"):
        anomaly_clip.fit(detector, tmp_path, anomaly_clip.TrainConfig(save_path=str(tmp_path), method=AAClipTraining()))


def _run(code: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_settings_and_registry_import_without_torch():
    result = _run("import sys, json, anomaly_clip\n"
                  "from anomaly_clip.methods.aaclip.config import AAClipConfig, AAClipTraining\n"
                  "from anomaly_clip.engine.config import TrainConfig\n"
                  "names = anomaly_clip.list_methods()\n"
                  "print(json.dumps({'torch': 'torch' in sys.modules, 'names': names}))")
    assert result == {"torch": False, "names": anomaly_clip.list_methods()}


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_answers_without_torch(command):
    argv = ["--help"] if command is None else [command, "--help"]
    code = ("import sys, json, time\nstart = time.perf_counter()\nfrom anomaly_clip.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'seconds': time.perf_counter() - start}))")
    result = _run(code)
    assert result["torch"] is False


def test_python_m_help_is_quick():
    start = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "anomaly_clip", "--help"], cwd=REPO, capture_output=True,
                               text=True)
    assert completed.returncode == 0 and "synthesize" in completed.stdout
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize("method", ["anomalyclip", "aaclip"])
def test_forward_traces_with_any_batch_size(tiny_backbone, method):
    """Tensors and buffers only: a trace of the forward scores other batch sizes like the model."""
    detector = anomaly_clip.create_detector(method, backbone=tiny_backbone).requires_grad_(False)
    example = torch.randn(2, 3, 56, 56)
    with pytest.warns(Warning):  # the tracer warns about Python ints taken from shapes
        traced = torch.jit.trace(lambda images: tuple(detector(images)), (example,), check_trace=False)
    images = torch.randn(3, 3, 56, 56)
    scores, maps = traced(images)
    expected = detector(images)
    torch.testing.assert_close(scores, expected.scores)
    torch.testing.assert_close(maps, expected.maps)
