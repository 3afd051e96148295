"""``anomaly-clip predict`` / ``calibrate`` and the matching Python API, on tiny trained checkpoints."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import anomaly_clip
from anomaly_clip import Inferencer
from anomaly_clip import cli
from anomaly_clip.cli.main import main
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.calibration import Calibration, quantile_threshold, quantile_value, sidecar_path
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.engine.inference import expand_inputs
from anomaly_clip.clip.config import RANDOM_WEIGHTS_WARNING
from anomaly_clip.engine.outputs import read_map_png16, write_map_png16
from anomaly_clip.engine.visualization import GAP, PANEL_MIN_HEIGHT

TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu",
        "--num_workers", "0"]
SIZES = {"gray.png": (40, 70), "nested/rgba.png": (64, 64), "deep16.png": (50, 30), "photo.jpg": (48, 80),
         "nested/wide.bmp": (33, 90)}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), classes=["fabric"], n_train=2,
                                      n_test_normal=3, n_test_anomalous=3, image_size=64, seed=5)


@pytest.fixture(scope="module")
def checkpoint(synthetic, tmp_path_factory):
    save = tmp_path_factory.mktemp("anomalyclip")
    return cli.train_main(["--train_data_path", synthetic, "--save_path", str(save), "--epoch", "1",
                           "--batch_size", "4", "--features_list", "12", "24", *TINY])


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Grayscale, RGBA, 16-bit, JPEG and BMP images of several non-square sizes, plus a corrupt file."""
    root = tmp_path_factory.mktemp("own_images")
    (root / "nested").mkdir()
    rng = np.random.default_rng(0)
    for name, (height, width) in SIZES.items():
        if name == "gray.png":
            image = Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L")
        elif name.endswith("rgba.png"):
            image = Image.fromarray(rng.integers(0, 255, (height, width, 4), dtype=np.uint8), "RGBA")
        elif name == "deep16.png":
            image = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
        else:
            image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), "RGB")
        image.save(root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (root / "notes.txt").write_text("not an image: ignored when a folder is searched")
    return root


@pytest.fixture(scope="module")
def model(checkpoint):
    return anomaly_clip.load(checkpoint, device="cpu")


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def bar_run(checkpoint, mixed_folder, tmp_path_factory):
    """The bar of the feature, plus maps and overlays: predict a folder with a known threshold."""
    out = tmp_path_factory.mktemp("predicted")
    main(["predict", "--checkpoint_path", str(checkpoint), "--input", str(mixed_folder), "--save_path", str(out),
          "--image_threshold", "0.5", "--pixel_threshold", "0.3", "--save-maps", "npz", "--overlays",
          "--batch_size", "2", "--num_workers", "0", "--device", "cpu"])
    return out


def test_the_bar_one_row_per_image(bar_run, mixed_folder):
    rows = read_rows(bar_run / "predictions.csv")
    assert list(rows[0]) == ["path", "score", "label", "error", "warning"]  # a random-weights model: every row says so
    assert {row["warning"] for row in rows} == {RANDOM_WEIGHTS_WARNING}
    images = [p for p in mixed_folder.rglob("*") if p.suffix in (".png", ".jpg", ".bmp")]
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    for row in rows:
        if row["path"].endswith("broken.png"):
            assert row["score"] == "" and row["label"] == "" and "broken.png" in row["error"]
        else:
            assert row["error"] == "" and row["label"] == str(int(float(row["score"]) >= 0.5))


def test_maps_at_original_size_and_overlays(bar_run):
    for name, size in SIZES.items():
        saved = np.load(bar_run / "maps" / f"{name}.npz")
        assert saved["map"].shape == size and saved["map"].dtype == np.float32
        overlay = Image.open(bar_run / "overlays" / f"{name}.jpg")
        assert overlay.format == "JPEG"
        # three columns, small images enlarged to PANEL_MIN_HEIGHT, under a header and over the colour bar
        height = max(size[0], PANEL_MIN_HEIGHT)
        assert overlay.width == 3 * round(size[1] * height / size[0]) + 2 * GAP and overlay.height > height
    assert not list((bar_run / "overlays").glob("broken.png*"))


def test_labels_follow_a_known_threshold(model, mixed_folder, bar_run):
    rows = [r for r in read_rows(bar_run / "predictions.csv") if not r["error"]]
    scores = sorted(float(r["score"]) for r in rows)
    threshold = (scores[1] + scores[2]) / 2
    prediction = Inferencer(model).predict_paths([r["path"] for r in rows])
    np.testing.assert_allclose(prediction.scores.numpy(), [float(r["score"]) for r in rows], rtol=1e-6)
    labels = Inferencer(model).decide(prediction, image_threshold=threshold).labels
    assert labels.tolist() == [float(r["score"]) >= threshold for r in rows] and int(labels.sum()) == len(rows) - 2


def test_scores_do_not_depend_on_the_other_images(model, mixed_folder):
    paths = [p for p in expand_inputs([mixed_folder]) if p.name != "broken.png"]
    together = Inferencer(model, batch_size=4).predict_paths(paths, original_size=True)
    for index in (0, 3):
        alone = Inferencer(model).predict_paths([paths[index]], original_size=True)
        assert alone.scores[0].item() == pytest.approx(together.scores[index].item(), abs=1e-5)
        torch.testing.assert_close(alone.maps[0], together.maps[index], atol=1e-5, rtol=1e-4)
        assert tuple(together.maps[index].shape) == np.asarray(Image.open(paths[index])).shape[:2]


def test_calibration_round_trip_through_load(checkpoint, synthetic, tmp_path):
    calibration = cli.calibrate_main(["--checkpoint_path", str(checkpoint), "--data_path", synthetic,
                                      "--output", str(tmp_path / "c.json"), *TINY[-4:]])
    assert calibration.rule == "f1-max" and calibration.provenance["num_images"] == 6
    assert calibration.provenance["random_init"] is True and calibration.provenance["data_path"] == synthetic
    assert Calibration.read(tmp_path / "c.json") == calibration
    model = anomaly_clip.load(checkpoint, device="cpu", calibration=tmp_path / "c.json")
    assert model.calibration == calibration
    prediction = Inferencer(model).predict_paths([str(p) for p in expand_inputs([f"{synthetic}/fabric/test/**/*.png"])],
                                     original_size=True)
    decision = Inferencer(model).decide(prediction)
    assert decision.labels.tolist() == (prediction.scores >= calibration.image_threshold).tolist()
    assert [m.shape for m in decision.masks] == [m.shape for m in prediction.maps]
    assert Inferencer(model).decide(prediction, image_threshold=math.inf).labels.sum() == 0
    copy = save_checkpoint(tmp_path / "copy.pth", model)
    assert sidecar_path(copy).is_file() and anomaly_clip.load(copy, device="cpu").calibration == calibration


def test_calibration_of_other_weights_is_not_used(checkpoint, synthetic, tmp_path):
    model = anomaly_clip.load(checkpoint, device="cpu")
    cli.calibrate_main(["--checkpoint_path", str(checkpoint), "--input", f"{synthetic}/fabric/test/good",
                        "--normal-quantile", "1", "--output", str(tmp_path / "c.json"), *TINY[-4:]])
    with torch.no_grad():
        next(model.prompt_learner.parameters()).add_(1.0)
    retrained = save_checkpoint(tmp_path / "retrained.pth", model)
    Calibration.read(tmp_path / "c.json").save(sidecar_path(retrained))
    assert anomaly_clip.load(retrained, device="cpu").calibration is None  # found beside it: warned, unused
    with pytest.raises(ValueError, match="other weights"):
        anomaly_clip.load(retrained, device="cpu", calibration=tmp_path / "c.json")


def test_sidecar_is_picked_up_by_load_and_predict(checkpoint, synthetic, tmp_path):
    normal = f"{synthetic}/fabric/test/good"
    calibration = cli.calibrate_main(["--checkpoint_path", str(checkpoint), "--input", normal,
                                      "--normal-quantile", "1", *TINY[-4:]])
    try:
        assert sidecar_path(checkpoint).is_file() and calibration.rule == "normal-quantile"
        model = anomaly_clip.load(checkpoint, device="cpu")
        assert model.calibration == calibration
        normal_paths = expand_inputs([normal])
        prediction = Inferencer(model).predict_paths(normal_paths)
        assert calibration.image_threshold == pytest.approx(prediction.scores.max().item(), abs=1e-6)
        assert calibration.pixel_threshold == pytest.approx(prediction.maps.max().item(), abs=1e-6)
        rows = cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", normal, "--save_path",
                                 str(tmp_path), "--overlays", "--map_range", "0", "3", *TINY[-2:]])
        assert [r.label for r in rows] != [None] * len(rows)
        settings = json.loads((tmp_path / "predict_settings.json").read_text())
        assert settings["overlay_colour_range"] == [0.0, 3.0]
        assert settings["calibration"]["pixel_threshold"] == calibration.pixel_threshold
        assert len(list((tmp_path / "overlays").rglob("*.jpg"))) == len(rows)
        assert sum(r.label for r in rows) == 0  # q = 1: every calibration image is normal, the maximum too
    finally:
        sidecar_path(checkpoint).unlink()


def test_calibration_needs_labels_for_f1_max(checkpoint, synthetic, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("calibrate", ["--checkpoint_path", str(checkpoint), "--input", synthetic, *TINY[-4:]])
    assert exit_info.value.code == 2 and "give --normal_quantile" in capsys.readouterr().err


def test_quantile_value_and_png16_maps(tmp_path):
    values = torch.arange(1.0, 101.0)
    assert quantile_value(values, 1.0) == 100.0 and quantile_value(values, 0.9) == 90.0
    assert 100.0 < quantile_threshold(values, 1.0) <= 100.0001 and 90.0 < quantile_threshold(values, 0.9) < 91.0
    assert quantile_threshold(torch.zeros(3), 1.0) > 0.0  # at least one float step above
    assert (values >= quantile_threshold(values, 0.9)).sum() == 10  # 90 of 100 values normal
    with pytest.raises(ValueError):
        quantile_value(values, 0.0)
    anomaly_map = np.random.default_rng(1).normal(size=(17, 29)).astype(np.float32)
    write_map_png16(anomaly_map, tmp_path / "m.png")
    restored = read_map_png16(tmp_path / "m.png")
    span = anomaly_map.max() - anomaly_map.min()
    np.testing.assert_allclose(restored, anomaly_map, atol=span / 65535)


def test_inputs_are_expanded_and_missing_ones_named(mixed_folder, tmp_path):
    assert len(expand_inputs([mixed_folder])) == len(SIZES) + 1
    assert [p.name for p in expand_inputs([f"{mixed_folder}/**/*.bmp"])] == ["wide.bmp"]
    assert expand_inputs([mixed_folder / "gray.png", mixed_folder / "gray.png"]) == [mixed_folder / "gray.png"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        expand_inputs([tmp_path / "nowhere"])


def test_aaclip_through_calibrate_and_predict(synthetic, mixed_folder, tmp_path):
    last = cli.train_main(["--method", "aaclip", "--dataset", "synthetic", "--train_data_path", synthetic,
                           "--save_path", str(tmp_path / "run"), "--shot", "2", "--text_epoch", "0",
                           "--image_epoch", "1", "--text_batch_size", "4", "--image_batch_size", "4", *TINY])
    calibration = cli.calibrate_main(["--checkpoint_path", str(last), "--data_path", synthetic,
                                      "--class_name", "fabric", *TINY[-4:]])
    assert set(calibration.score_statistics) == {"score_low", "score_high", "map_low", "map_high"}
    rows = cli.predict_main(["--checkpoint_path", str(last), "--input", str(mixed_folder), "--class_name", "fabric",
                             "--save_path", str(tmp_path / "out"), "--overlays", "--save-maps", "png16",
                             "--batch_size", "3", *TINY[-4:]])
    scored = [r for r in rows if not r.error]
    assert len(scored) == len(SIZES) and all(r.label in (0, 1) for r in scored)
    model = anomaly_clip.load(last, device="cpu")
    alone = Inferencer(model).predict_paths([scored[2].path], class_names=["fabric"])
    assert alone.scores[0].item() == pytest.approx(scored[2].score, abs=1e-5)
    assert read_map_png16(tmp_path / "out" / "maps" / "gray.png.png").shape == SIZES["gray.png"]


def test_predict_fuses_normal_references(checkpoint, synthetic, tmp_path):
    """A reference identical to the input: weight 1 scores by the references alone, which see no
    anomaly (distance 0 everywhere); the bank saved once loads again with the same scores."""
    good = sorted((Path(synthetic) / "fabric" / "train" / "good").glob("*.png"))[0]
    references = tmp_path / "refs"
    references.mkdir()
    shutil.copy(good, references / "ref.png")
    base = ["--checkpoint_path", str(checkpoint), "--input", str(good), "--device", "cpu", "--num_workers", "0"]
    rows = cli.predict_main(base + ["--reference_images", str(references), "--class_name", "fabric",
                                    "--reference_weight", "1", "--save-maps", "npz", "--save_path", str(tmp_path / "out"),
                                    "--save_reference_bank", str(tmp_path / "bank.pt")])
    assert rows[0].score == pytest.approx(0.0, abs=1e-5)
    saved = np.load(next((tmp_path / "out" / "maps").rglob("*.npz")))
    assert np.abs(saved[saved.files[0]]).max() < 1e-5
    again = cli.predict_main(base + ["--reference_images", str(tmp_path / "bank.pt"), "--class_name", "fabric",
                                     "--reference_weight", "1", "--save_path", str(tmp_path / "again")])
    assert again[0].score == pytest.approx(rows[0].score, abs=1e-6)
    plain = cli.predict_main(base + ["--save_path", str(tmp_path / "plain")])
    assert plain[0].score > 0.01


def test_inputs_once_each_and_masks_warned_about(synthetic, tmp_path, caplog, monkeypatch):
    """A dataset folder given whole holds masks (ground_truth/, *_mask): they are warned about; one
    file named by a relative and an absolute path is one input (before: two rows, one map file)."""
    monkeypatch.chdir(Path(synthetic).parent)
    relative = Path(Path(synthetic).name) / "fabric" / "train" / "good"
    first = sorted(relative.iterdir())[0]
    assert expand_inputs([first, first.resolve(), relative]) == sorted(relative.iterdir())
    with caplog.at_level("WARNING", logger="anomaly_clip.engine.inference"):
        paths = expand_inputs([f"{synthetic}/fabric"])
    masks = [path for path in paths if "ground_truth" in path.parts]
    assert masks and f"{len(masks)} of the {len(paths)} input files look like masks" in caplog.text
