"""CLIP and CLIP-AC (AnomalyCLIP appendix A.2) against a plain per-image reference on open_clip's
own forward, and both evaluated by test.py without a checkpoint."""
from __future__ import annotations

import json

import open_clip
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anomaly_clip import cli
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.references import MemoryBank, predict_with_references
from anomaly_clip import create_detector
from anomaly_clip.methods import training_free_methods
from anomaly_clip.methods.clip import CLIPConfig, CLIPDetector
from anomaly_clip.methods.clip_ac import CLIPACConfig, CLIPACDetector
from anomaly_clip.methods.components.prompts import CLIP_IMAGENET_TEMPLATES

from conftest import TINY_FLAGS, tiny_config



@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=2, n_test_normal=2,
                                      n_test_anomalous=2, image_size=64, seed=8)


def reference_text(clip, sentences_by_state):
    """CLIP's zero-shot ensembling: normalise each sentence embedding, average, normalise."""
    rows = []
    for sentences in sentences_by_state:
        with torch.no_grad():
            embeddings = clip.encode_text(open_clip.tokenize(sentences))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


def reference_prediction(clip, image, text, sigma=4.0):
    """One image through open_clip's forward: 100 * cos softmax on the pooled embedding and on
    every ln_post-ed, projected patch token; bilinear upsampling; scipy's Gaussian filter."""
    visual = clip.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(image[None])
    finally:
        visual.output_tokens = False
    pooled = pooled[0] / pooled[0].norm()
    score = torch.softmax(100 * pooled @ text.T, dim=-1)[1]
    patches = tokens[0] @ visual.proj
    patches = patches / patches.norm(dim=-1, keepdim=True)
    probability = torch.softmax(100 * patches @ text.T, dim=-1)[:, 1]
    side = int(probability.shape[0] ** 0.5)
    size = image.shape[-1]
    up = F.interpolate(probability.reshape(1, 1, side, side), size=(size, size), mode="bilinear",
                       align_corners=False)[0, 0]
    return score, torch.from_numpy(scipy.ndimage.gaussian_filter(up.double().numpy(), sigma=sigma)).float()


@pytest.mark.parametrize("cls, config, sentences", [
    (CLIPDetector, CLIPConfig(), lambda name: [[f"A photo of a normal {name}."], [f"A photo of an anomalous {name}."]]),
    (CLIPACDetector, CLIPACConfig(),
     lambda name: [[t.format(f"{state} {name}") for t in CLIP_IMAGENET_TEMPLATES]
                   for state in ("normal", "anomalous")]),
])
def test_scores_and_maps_match_plain_reference(tiny_backbone, cls, config, sentences):
    detector = cls(tiny_backbone, config).eval()
    torch.manual_seed(2)
    images = torch.randn(3, 3, 56, 56)
    names = ["metal_nut", "fabric", "metal_nut"]
    prediction = detector(images, names)
    clip = tiny_backbone.clip
    texts = {name: reference_text(clip, sentences(name.replace("_", " "))) for name in set(names)}
    for b, name in enumerate(names):
        text = texts[name]
        score, anomaly_map = reference_prediction(clip, images[b], text)
        torch.testing.assert_close(prediction.scores[b], score, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(prediction.maps[b], anomaly_map, rtol=1e-4, atol=1e-5)
    assert prediction.maps.shape == (3, 56, 56) and 0 <= float(prediction.maps.min())


def test_imagenet_templates_are_the_80_of_the_clip_paper():
    assert len(CLIP_IMAGENET_TEMPLATES) == 80 == len(set(CLIP_IMAGENET_TEMPLATES))
    assert all(template.count("{}") == 1 for template in CLIP_IMAGENET_TEMPLATES)
    assert {"itap of a {}.", "a bad photo of a {}.", "a tattoo of the {}."} <= set(CLIP_IMAGENET_TEMPLATES)


def test_text_features_are_computed_once_per_class(tiny_backbone, monkeypatch):
    detector = CLIPACDetector(tiny_backbone, CLIPACConfig())
    calls = []
    original = tiny_backbone.encode_text_embeddings
    monkeypatch.setattr(tiny_backbone, "encode_text_embeddings", lambda *a, **k: calls.append(1) or original(*a, **k))
    images = torch.randn(2, 3, 56, 56)
    first = detector(images, ["fabric", "fabric"])
    count = len(calls)
    second = detector(images, ["fabric", "fabric"])
    assert count > 0 and len(calls) == count
    torch.testing.assert_close(first.maps, second.maps, rtol=0, atol=0)
    assert not detector.trainable_state_dict() and "text.features" not in detector.state_dict()
    assert dict(detector.named_buffers())["text.features"].shape == (1, 2, tiny_backbone.embed_dim)


def test_generic_memory_bank_works_with_clip(tiny_backbone, synthetic_root):
    from anomaly_clip.data.fewshot import normal_references
    from anomaly_clip.data.formats import load_samples

    detector = CLIPDetector(tiny_backbone, CLIPConfig(features_list=(12, 24))).eval()
    bank = MemoryBank.build(detector, normal_references(load_samples(synthetic_root, split="train"), 1),
                            synthetic_root)
    fused = predict_with_references(detector, torch.randn(2, 3, 56, 56), ["fabric", "washer"], bank, 0.5)
    assert fused.maps.shape == (2, 56, 56) and torch.isfinite(fused.scores).all()


@pytest.mark.parametrize("method", ["clip", "clip_ac"])
def test_test_py_evaluates_without_training(method, synthetic_root, tmp_path):
    result = cli.test_main(["--method", method, "--data_path", synthetic_root, "--save_path", str(tmp_path), *TINY_FLAGS])
    content = json.loads((tmp_path / "results.json").read_text())
    assert content["settings"]["method"] == method and content["settings"]["checkpoint"] is None
    assert [row["class"] for row in content["classes"]] == ["fabric", "washer"]
    assert 0.0 <= result["report"].mean()["pixel AUROC"] <= 1.0


def test_training_free_methods_refuse_training_and_trained_ones_need_a_checkpoint(synthetic_root, tmp_path, capsys):
    assert training_free_methods() == ["clip", "clip_ac", "winclip"]
    with pytest.raises(SystemExit) as exit_info:
        cli.run("train", ["--method", "clip", "--train_data_path", synthetic_root, "--save_path", str(tmp_path), *TINY_FLAGS])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: clip is training-free: evaluate it directly with test.py --method clip "
                                       "(no checkpoint needed); see 'anomaly-clip train --help'\n")
    for argv, message in ((["--method", "vand"], "--checkpoint_path is required: vand has learnt parts "
                                                 "(training-free methods: clip, clip_ac, winclip)"),
                          ([], "--checkpoint_path is required (training-free methods need only --method: clip, "
                               "clip_ac, winclip)")):
        with pytest.raises(SystemExit) as exit_info:
            cli.run("test", [*argv, "--data_path", synthetic_root, "--save_path", str(tmp_path), *TINY_FLAGS])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: {message}; see 'anomaly-clip test --help'\n"


def test_create_detector_builds_the_default_backbone_settings():
    detector = create_detector("clip_ac", backbone=tiny_config(image_size=112), device="cpu")
    assert isinstance(detector, CLIPACDetector) and detector.image_size == 112 and not detector.training
    assert detector.layers == (24,)
    assert CLIPDetector.default_backbone_config().activation == "quick_gelu"


def test_calibrate_and_predict_a_training_free_method_without_checkpoint(synthetic_root, tmp_path, capsys):
    """Users score their own images with a baseline: calibrate writes where --output says (there is no
    checkpoint to sit beside), predict reads it, and the scores are the detector's own."""
    normal = f"{synthetic_root}/fabric/test/good"
    with pytest.raises(SystemExit) as exit_info:
        cli.run("calibrate", ["--method", "clip", "--input", normal, "--normal_quantile", "1", *TINY_FLAGS])
    assert exit_info.value.code == 2 and "give --output FILE" in capsys.readouterr().err
    output = tmp_path / "clip.calibration.json"
    calibration = cli.calibrate_main(["--method", "clip", "--input", normal, "--normal_quantile", "1", "--output",
                                      str(output), "--class_name", "fabric", *TINY_FLAGS])
    assert output.is_file() and calibration.method == "clip" and calibration.provenance["checkpoint"] is None
    rows = cli.predict_main(["--method", "clip", "--input", normal, "--calibration", str(output), "--save_path",
                             str(tmp_path / "p"), *TINY_FLAGS[-4:]])  # the backbone from the calibration
    settings = json.loads((tmp_path / "p" / "predict_settings.json").read_text())
    assert settings["checkpoint"] is None and settings["method"] == "clip" and settings["class_name"] == "fabric"
    assert [row.label for row in rows] == [int(row.score >= calibration.image_threshold) for row in rows]
    detector = create_detector("clip", backbone=tiny_config(), device="cpu")
    paths = [row.path for row in rows]
    from anomaly_clip import Inferencer

    expected = Inferencer(detector).predict_paths(paths, class_names=["fabric"] * len(paths))
    torch.testing.assert_close(torch.tensor([row.score for row in rows]), expected.scores, rtol=1e-5, atol=1e-6)
    assert max(row.score for row in rows) == pytest.approx(calibration.image_threshold, abs=1e-6)
    assert settings["random_init"] is True and sum(row.label for row in rows) == 0  # q = 1: all normal


@pytest.mark.parametrize("method", ["clip", "clip_ac", "winclip", "vand", "coop"])
def test_create_detector_scores_a_random_batch(tiny_backbone, method):
    detector = create_detector(method, backbone=tiny_backbone)
    assert not detector.training
    images = torch.randn(2, 3, 56, 56)
    prediction = detector(images)
    assert prediction.scores.shape == (2,) and prediction.maps.shape == (2, 56, 56)
    named = detector(images, ["object", "object"])  # the generic class word of an unnamed batch
    torch.testing.assert_close(named.maps, prediction.maps)
    torch.testing.assert_close(named.scores, prediction.scores)


@pytest.mark.parametrize("method, word", [("clip", "metal nut"), ("clip_ac", "metal nut"), ("winclip", "metal_nut"),
                                          ("vand", "metal_nut"), ("coop", "metal nut")])
def test_class_aware_baselines_name_their_class_text_and_honour_the_default_class(tiny_backbone, method, word):
    """Their text depends on the class: ``class_text`` is the word their prompts write (so a
    calibration made for one class warns on another), and images without class names are scored
    as ``default_class_name`` (else 'object'), exactly as when each image names that class."""
    detector = create_detector(method, backbone=tiny_backbone).eval()
    images = torch.randn(2, 3, detector.image_size, detector.image_size, generator=torch.Generator().manual_seed(0))
    assert detector.class_text() == "object" and detector.class_text("metal_nut") == word
    generic = detector(images)
    assert torch.equal(generic.scores, detector(images, ["object", "object"]).scores)
    detector.default_class_name = "metal_nut"
    assert detector.class_text() == word
    named = detector(images, ["metal_nut", "metal_nut"])
    by_default = detector(images)
    assert torch.equal(by_default.scores, named.scores) and torch.equal(by_default.maps, named.maps)
    assert not torch.equal(by_default.scores, generic.scores)
