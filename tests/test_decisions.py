"""Decisions are never silently wrong (issue 18, items 2 and 7): NaN never becomes a label,
a degenerate AA-CLIP calibration is refused, a calibration is used only with the inference
settings it was made with, and a score does not depend on its batch beyond float rounding."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from anomaly_clip import Inferencer
from anomaly_clip.engine.calibration import Calibration, NonFiniteError, decide, sidecar_path
from anomaly_clip.engine.checkpoint import create_detector, load, save_checkpoint
from anomaly_clip.engine.detector import Prediction
from anomaly_clip.engine.inference import predict_files

from anomaly_clip.cli.main import run

from faults import SIZE, TINY, fails, small_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory, seed=8, classes=("fabric", "washer"))


def _detector(method, backbone, seed=0):
    torch.manual_seed(seed)
    config = {"features_list": (12, 24)} if method == "anomalyclip" else {"dataset": "mvtec"}
    detector = create_detector(method, backbone=backbone, config=config)
    with torch.no_grad():  # untrained adapters are the identity: give them weights to use
        for parameter in detector.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    detector.text_parts_changed()
    return detector


@pytest.fixture(scope="module")
def models(tiny_backbone, tmp_path_factory):
    """Checkpoints of both methods (trained on 'fabric' and 'washer', as the files record), and
    an AnomalyCLIP whose prompts are NaN (a diverged model)."""
    folder = tmp_path_factory.mktemp("models")
    paths = {method: save_checkpoint(folder / method / "model.pth", _detector(method, tiny_backbone),
                                     class_names=["fabric", "washer"]) for method in ("anomalyclip", "aaclip")}
    broken = _detector("anomalyclip", tiny_backbone)
    with torch.no_grad():
        for parameter in broken.prompt_learner.parameters():
            parameter.fill_(float("nan"))
    paths["nan"] = save_checkpoint(folder / "nan" / "model.pth", broken)
    return paths


def rows(path: Path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---- NaN never becomes a label ---------------------------------------------------------------------

def test_a_model_that_outputs_nan_labels_nothing_and_predict_fails(models, data, tmp_path, capsys):
    Calibration(method="anomalyclip", image_threshold=0.5, pixel_threshold=0.5).save(sidecar_path(models["nan"]))
    message = fails(capsys, "predict", ["--checkpoint_path", models["nan"], "--input", data / "fabric" / "test",
                                        "--save_path", tmp_path, *TINY])
    assert "no image was scored" in message
    written = rows(tmp_path / "predictions.csv")
    assert len(written) == 4 and all(row["label"] == "" and row["score"] == "" for row in written)
    assert all("not finite" in row["error"] for row in written)


def test_one_nan_image_among_finite_ones_is_an_error_row(models, data):
    detector = load(models["anomalyclip"], device="cpu")
    paths = sorted((data / "fabric" / "test").rglob("*.png"))

    def scorer(images, class_names):
        prediction = detector(images, class_names)
        scores = prediction.scores.clone()
        scores[1] = float("nan")
        return Prediction(scores=scores, maps=prediction.maps)

    predicted = predict_files(detector, paths, batch_size=4, calibration=Calibration("anomalyclip", 0.0),
                              scorer=scorer, progress=False)
    assert [row.label is None for row in predicted] == [False, True, False, False]
    assert "not finite" in predicted[1].error and predicted[1].score is None
    assert all(row.label == 1 for i, row in enumerate(predicted) if i != 1)


def test_decide_refuses_non_finite_scores_and_maps(models, data):
    scores, maps = torch.tensor([0.2, float("nan"), 0.9]), torch.zeros(3, 4, 4)
    calibration = Calibration("anomalyclip", image_threshold=0.5, pixel_threshold=0.5)
    with pytest.raises(NonFiniteError, match="1 of 3 image scores are NaN or infinite"):
        calibration.decide(Prediction(scores=scores, maps=maps))
    maps[2, 0, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="1 of 3 anomaly maps"):
        decide(torch.tensor([0.2, 0.3, 0.9]), [m for m in maps], None, 0.5)
    inferencer = Inferencer(load(models["anomalyclip"], device="cpu"), calibration=calibration)
    with pytest.raises(NonFiniteError):
        inferencer.decide(Prediction(scores=torch.tensor([float("-inf")]), maps=torch.zeros(1, 4, 4)))
    assert decide(torch.tensor([0.2, 0.9]), None, 0.5, None).labels.tolist() == [False, True]


def test_calibrating_a_model_that_outputs_nan_is_one_line(models, data, capsys):
    message = fails(capsys, "calibrate", ["--checkpoint_path", models["nan"], "--data_path", data,
                                          "--output", data.parent / "nan.json", *TINY])
    assert "cannot calibrate" in message and "NaN or infinite" in message


def test_predict_fails_when_nothing_could_be_read(models, tmp_path, capsys):
    broken = tmp_path / "in"
    broken.mkdir()
    for name in ("a.png", "b.jpg"):
        (broken / name).write_bytes(b"not an image")
    message = fails(capsys, "predict", ["--checkpoint_path", models["anomalyclip"], "--input", broken,
                                        "--save_path", tmp_path / "out", *TINY])
    assert "no image was scored: all 2 failed" in message
    assert all(row["error"] for row in rows(tmp_path / "out" / "predictions.csv"))


# ---- AA-CLIP's score ranges need different images ---------------------------------------------------

@pytest.mark.parametrize("copies", [1, 3])
def test_aaclip_calibration_on_one_image_or_copies_is_refused(models, data, tmp_path, capsys, copies):
    folder = tmp_path / "good"
    folder.mkdir()
    for index in range(copies):
        shutil.copy(data / "fabric" / "train" / "good" / "000.png", folder / f"{index}.png")
    output = tmp_path / "c.json"
    message = fails(capsys, "calibrate", ["--checkpoint_path", models["aaclip"], "--input", folder,
                                          "--normal_quantile", "1", "--class_name", "fabric", "--output", output,
                                          *TINY])
    assert "score ranges are empty" in message and "score_low = score_high" in message
    assert not output.exists()


@pytest.mark.parametrize("copies", [1, 3])
def test_a_calibration_on_one_distinct_score_is_warned_about(models, data, tmp_path, capsys, copies):
    """Other methods than AA-CLIP can be calibrated on one image or copies of one (their score
    needs no range), but the quantile of a single distinct score says nothing of a spread: a warning."""
    folder = tmp_path / "good"
    folder.mkdir()
    for index in range(copies):
        shutil.copy(data / "fabric" / "train" / "good" / "000.png", folder / f"{index}.png")
    capsys.readouterr()
    run("calibrate", [str(a) for a in ["--checkpoint_path", models["anomalyclip"], "--input", folder,
                                       "--normal_quantile", "0.5", "--output", tmp_path / "c.json", *TINY]])
    warned = [line for line in capsys.readouterr().out.splitlines() if "single distinct score" in line]
    assert len(warned) == 1 and f"The {copies} calibration images used for the quantile give" in warned[0]
    assert (tmp_path / "c.json").is_file()
    run("calibrate", [str(a) for a in ["--checkpoint_path", models["anomalyclip"], "--input",
                                       data / "fabric" / "train" / "good", "--normal_quantile", "0.5", "--output",
                                       tmp_path / "two.json", *TINY]])
    assert "single distinct score" not in capsys.readouterr().out


def test_a_stored_degenerate_calibration_is_refused_or_left_unused(models, data, tmp_path, capsys):
    degenerate = Calibration("aaclip", image_threshold=0.5).to_dict()
    degenerate["score_statistics"] = {"score_low": 0.4, "score_high": 0.4, "map_low": -1.0, "map_high": 2.0}
    explicit = tmp_path / "degenerate.json"
    explicit.write_text(json.dumps(degenerate))
    argv = ["--checkpoint_path", models["aaclip"], "--input", data / "fabric" / "test", "--class_name", "fabric",
            "--save_path", tmp_path / "out", *TINY]
    message = fails(capsys, "predict", argv + ["--calibration", explicit])
    assert "unusable score statistics (score_low = score_high" in message
    shutil.copy(explicit, sidecar_path(models["aaclip"]))
    try:
        run("predict", [str(a) for a in argv])
    finally:
        sidecar_path(models["aaclip"]).unlink()
    assert "not using it" in capsys.readouterr().out
    assert all(row["label"] == "" and row["score"] for row in rows(tmp_path / "out" / "predictions.csv"))


# ---- a calibration belongs to its inference settings --------------------------------------------------

def _calibrate(model, data, output, *extra):
    run("calibrate", [str(a) for a in ["--checkpoint_path", model, "--data_path", data, "--output", output, *TINY,
                                       *extra]])
    return output


def _predict(model, data, out, *extra):
    run("predict", [str(a) for a in ["--checkpoint_path", model, "--input", data / "fabric" / "test",
                                     "--save_path", out, *TINY, *extra]])
    return rows(out / "predictions.csv")


def test_references_at_predict_time_need_a_calibration_made_with_them(models, data, tmp_path, capsys):
    good = data / "fabric" / "train" / "good"
    plain = _calibrate(models["anomalyclip"], data, tmp_path / "plain.json")
    message = fails(capsys, "predict", ["--checkpoint_path", models["anomalyclip"], "--input", data / "fabric",
                                        "--save_path", tmp_path / "a", "--calibration", plain, "--reference_images",
                                        good, "--class_name", "fabric", *TINY])
    assert "normal references fused in (calibrated without)" in message and "Calibrate again" in message
    shutil.copy(plain, sidecar_path(models["anomalyclip"]))
    try:
        predicted = _predict(models["anomalyclip"], data, tmp_path / "b", "--reference_images", good, "--class_name",
                             "fabric")
    finally:
        sidecar_path(models["anomalyclip"]).unlink()
    assert "not using it" in capsys.readouterr().out and all(row["label"] == "" for row in predicted)
    fused = _calibrate(models["anomalyclip"], data, tmp_path / "fused.json", "--reference_images", good,
                       "--class_name", "fabric")
    predicted = _predict(models["anomalyclip"], data, tmp_path / "c", "--reference_images", good, "--class_name",
                         "fabric", "--calibration", fused)
    assert all(row["label"] in ("0", "1") for row in predicted)
    message = fails(capsys, "predict", ["--checkpoint_path", models["anomalyclip"], "--input", data / "fabric",
                                        "--save_path", tmp_path / "d", "--calibration", fused, "--reference_images",
                                        good, "--reference_weight", "0.3", "--class_name", "fabric", *TINY])
    assert "weight 0.3" in message


def test_class_name_and_image_size_must_match_the_calibration(models, data, tmp_path, capsys):
    calibration = _calibrate(models["aaclip"], data, tmp_path / "fabric.json", "--class_name", "fabric")
    message = fails(capsys, "predict", ["--checkpoint_path", models["aaclip"], "--input", data / "washer",
                                        "--save_path", tmp_path / "a", "--calibration", calibration,
                                        "--class_name", "washer", *TINY])
    assert "'washer' (calibrated on 'fabric')" in message
    predicted = _predict(models["aaclip"], data, tmp_path / "b", "--calibration", calibration)  # class from it
    assert all(row["label"] in ("0", "1") for row in predicted)
    message = fails(capsys, "predict", ["--checkpoint_path", models["aaclip"], "--input", data / "fabric",
                                        "--save_path", tmp_path / "c", "--calibration", calibration, *TINY[:-6],
                                        "--image_size", "112", "--device", "cpu", "--num_workers", "0"])
    assert "image size 112 (calibrated at 56)" in message
    plain = _calibrate(models["anomalyclip"], data, tmp_path / "anomalyclip.json", "--class_name", "fabric")
    predicted = _predict(models["anomalyclip"], data, tmp_path / "d", "--calibration", plain, "--class_name",
                         "washer")  # object-agnostic prompts: the class name changes nothing
    assert all(row["label"] in ("0", "1") for row in predicted)


def test_a_calibration_belongs_to_its_backbone(models, data, tmp_path, capsys):
    """The backbone settings that change scores (model, pretrained tag, random init, activation,
    position resize) are compared like the image size: an explicit calibration made with another
    backbone is refused, a sidecar left unused. For a training-free method the backbone is all
    there is to compare (its weights fingerprint is that of nothing). A calibration written before
    the backbone was recorded is not compared on it."""
    gelu = [*TINY, "--activation", "gelu"]
    calibration = _calibrate(models["anomalyclip"], data, tmp_path / "quick.json")
    assert Calibration.read(calibration).provenance["backbone_config"]["activation"] == "quick_gelu"
    message = fails(capsys, "predict", ["--checkpoint_path", models["anomalyclip"], "--input", data / "fabric",
                                        "--save_path", tmp_path / "a", "--calibration", calibration, *gelu])
    assert "backbone activation 'gelu' (calibrated with 'quick_gelu')" in message
    shutil.copy(calibration, sidecar_path(models["anomalyclip"]))
    try:
        unused = _predict(models["anomalyclip"], data, tmp_path / "b", "--activation", "gelu")
        used = _predict(models["anomalyclip"], data, tmp_path / "c")
    finally:
        sidecar_path(models["anomalyclip"]).unlink()
    assert "not using it" in capsys.readouterr().out
    assert all(row["label"] == "" for row in unused) and all(row["label"] in ("0", "1") for row in used)
    free = tmp_path / "clip.json"
    run("calibrate", [str(a) for a in ["--method", "clip", "--data_path", data, "--output", free, *TINY]])
    predict_clip = ["--method", "clip", "--input", data / "fabric" / "test", "--class_name", "fabric",
                    "--calibration", free]
    message = fails(capsys, "predict", [*predict_clip, "--save_path", tmp_path / "d", *gelu])
    assert "backbone activation 'gelu'" in message
    message = fails(capsys, "predict", [*predict_clip, "--save_path", tmp_path / "e", *TINY,
                                        "--pos_embed_interpolation", "bicubic"])
    assert "backbone pos_embed_interpolation 'bicubic' (calibrated with" in message
    older = Calibration.read(free)
    del older.provenance["backbone_config"]
    older.save(tmp_path / "older.json")
    run("predict", [str(a) for a in [*predict_clip[:-1], tmp_path / "older.json", "--save_path", tmp_path / "f",
                                     *gelu]])
    assert all(row["label"] in ("0", "1") for row in rows(tmp_path / "f" / "predictions.csv"))


def test_calibration_images_that_are_normal_references_are_left_out(models, data, tmp_path, capsys):
    """As in ``test``: a reference scores ~0 against itself, so the calibration images that are
    also normal references are left out with a warning (``--data_path``), and a calibration set
    made only of references (``--input`` = ``--reference_images``) is one ``error:`` line."""
    calibration = _calibrate(models["anomalyclip"], data, tmp_path / "train.json", "--split", "train",
                             "--reference_images", "1", "--normal_quantile", "1")
    out = capsys.readouterr().out
    assert "2 of the calibration images are normal references of the memory bank" in out
    assert "left out of the calibration, which covers the other 2 images" in out
    assert Calibration.read(calibration).provenance["num_images"] == 2
    good = data / "fabric" / "train" / "good"
    output = tmp_path / "same.json"
    message = fails(capsys, "calibrate", ["--checkpoint_path", models["anomalyclip"], "--input", good,
                                          "--reference_images", good, "--class_name", "fabric",
                                          "--normal_quantile", "1", "--output", output, *TINY])
    assert "every one of the 2 calibration images is a normal reference" in message and not output.exists()


def test_aaclip_without_a_class_name_says_which_anchors_it_uses(models, data, tmp_path, capsys):
    _predict(models["aaclip"], data, tmp_path / "out")
    out = capsys.readouterr().out
    assert "No class name given: aaclip scores with the anchors of the generic class ('object')" in out
    assert "it was trained on 'fabric', 'washer'" in out and "--class_name NAME" in out
    _predict(models["anomalyclip"], data, tmp_path / "plain")
    assert "No class name given" not in capsys.readouterr().out


# ---- batches ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["anomalyclip", "aaclip"])
def test_scores_do_not_depend_on_the_batch_beyond_float_rounding(tiny_backbone, method):
    """README: a score equals the one of the image scored alone, to float rounding (measured:
    at most a few float32 units in the last place); the bound tested is 1e-5 relative."""
    detector = _detector(method, tiny_backbone, seed=3).eval()
    images = torch.randn(7, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    together = detector(images)
    alone = [detector(images[i:i + 1]) for i in range(7)]
    scores = torch.cat([p.scores for p in alone])
    maps = torch.cat([p.maps for p in alone])
    assert ((scores - together.scores).abs() <= 1e-5 * together.scores.abs()).all()
    assert ((maps - together.maps).abs() <= 1e-5 * together.maps.abs().max()).all()
