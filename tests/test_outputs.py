"""Output files: safe unique names from user data, background writing that loses nothing, panels
that explain themselves, and result files that survive a failing optional output."""
from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_clip import cli
from anomaly_clip.clip.config import RANDOM_WEIGHTS_WARNING
from anomaly_clip.data.records import Sample
from anomaly_clip.data.formats import write_meta_json
from anomaly_clip.engine import outputs
from anomaly_clip.engine.evaluation import PredictionWriter
from anomaly_clip.engine.outputs import (MAX_NAME_BYTES, OutputWriteError, OutputWriter, UniqueNames, is_safe_file_name,
                                         safe_file_name)
from anomaly_clip.engine.visualization import (NO_MASK_NOTE, NO_PIXEL_THRESHOLD_NOTE, PANEL_MAX_SIDE, RANDOM_WEIGHTS_NOTE,
                                               ColourScale, PanelContent, anomaly_panel)

RUN = ["--device", "cpu", "--num_workers", "0"]
LONG = "a" * 248  # a legal file name of 252 bytes with ".png"; adding ".npz" used to exceed the 255-byte limit
AWKWARD_NAMES = [LONG, "a/b", "..", ".", "", "../escape", "con", "Aux.txt", "x:y*z?", "trailing.", " lead", ".hidden",
                 "tab\there", "défaut_ü", "部品", "🔩bolt", "a" * 60 + "é" * 40]


@pytest.mark.parametrize("name", AWKWARD_NAMES)
def test_safe_file_names_are_usable_and_stable(name, tmp_path):
    safe = safe_file_name(name)
    assert safe == safe_file_name(name)                     # the same on every run and process
    assert is_safe_file_name(safe) and len(safe.encode()) <= MAX_NAME_BYTES
    assert "/" not in safe and "\\" not in safe and safe not in (".", "..")
    path = tmp_path / safe
    path.write_text("x")                                    # a real file of that name can be made here
    assert path.parent == tmp_path and path.read_text() == "x"
    if is_safe_file_name(name):
        assert safe == name                                 # readable names stay as they are
    else:
        assert safe.endswith("~" + outputs.name_digest(name))


def test_readable_unicode_names_are_kept():
    assert safe_file_name("défaut_ü") == "défaut_ü" and safe_file_name("部品") == "部品"
    assert safe_file_name("IMG 0001 (copy)") == "IMG 0001 (copy)"


def test_names_cleaned_alike_stay_apart_and_collisions_resolve_deterministically():
    assert safe_file_name("a:b") != safe_file_name("a_b") == "a_b"
    assert safe_file_name("a/b") != safe_file_name("a:b")
    first, second = UniqueNames(), UniqueNames()
    for names in (first, second):
        assert names.claim("Bottle") == "Bottle"
        assert names.claim("Bottle") == "Bottle"          # the same key claims its own name again
    clash = first.claim("bottle")                           # differs only by case: apart on any disk
    assert clash.casefold() != "bottle" and clash == second.claim("bottle")
    paths = UniqueNames()
    one = paths.claim_path(Path("Sub/Part.png"), key="/data/Sub/Part.png")
    other = paths.claim_path(Path("sub/part.png"), key="/data/sub/part.png")
    assert one == Path("Sub/Part.png") and str(other).casefold() != str(one).casefold()


def test_writer_reports_each_failed_file_and_writes_the_others(tmp_path, caplog):
    writer = OutputWriter(threads=2)

    def fails(path):
        raise OSError(28, "No space left on device")

    for index in range(6):
        writer.submit(tmp_path / f"{index}.txt", fails if index == 3 else (lambda path, i=index: path.write_text(str(i))))
    summary = writer.close()
    assert summary.files == 5 and summary.bytes == 5 and [p.name for p, _ in summary.failures] == ["3.txt"]
    assert "No space left" in summary.failures[0][1] and "3.txt" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.txt", "1.txt", "2.txt", "4.txt", "5.txt"]  # no temporaries
    with pytest.raises(OutputWriteError, match=r"1 output file\(s\) could not be written.*3.txt.*No space left"):
        summary.raise_for_failures()


def test_writer_queue_is_bounded(tmp_path):
    """``submit`` waits while ``pending`` jobs are queued or running: memory stays bounded."""
    writer = OutputWriter(threads=1, pending=2)
    release, running, most = threading.Event(), [], []
    lock = threading.Lock()

    def slow(path):
        with lock:
            running.append(path)
        release.wait(5)
        path.write_text("x")

    submitted = []

    def produce():
        for index in range(5):
            writer.submit(tmp_path / f"{index}", slow)
            submitted.append(index)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.5)
    most.append(len(submitted))
    release.set()
    producer.join(10)
    assert most[0] == 2 and writer.close().files == 5


def test_panel_says_what_is_missing_and_what_it_shows():
    image = np.full((40, 60, 3), 128, np.uint8)
    anomaly_map = np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60)
    plain = anomaly_panel(image, anomaly_map, (0.0, 1.0), PanelContent(header=["score 0.5"]))
    truth = np.zeros((40, 60), bool)
    truth[10:20, 10:30] = True
    annotated = anomaly_panel(image, anomaly_map, (0.0, 1.0),
                              PanelContent(header=["score 0.5"], pixel_threshold=0.5, predicted_mask=anomaly_map >= 0.5,
                                           truth=truth, annotated=True, notes=[RANDOM_WEIGHTS_NOTE]))
    for panel in (plain, annotated):
        assert panel.dtype == np.uint8 and panel.shape[1] == 3 * round(60 * 256 / 40) + 2 * 4 and panel.shape[0] > 256
    green = (annotated[..., 1] > 200) & (annotated[..., 0] < 100) & (annotated[..., 2] < 150)
    red = (annotated[..., 0] > 200) & (annotated[..., 1] < 80) & (annotated[..., 2] < 80)
    assert green.sum() > 50 and red.sum() > 50               # ground truth and predicted mask outlined
    assert not ((plain[..., 1] > 200) & (plain[..., 0] < 100) & (plain[..., 2] < 150)).any()
    assert NO_PIXEL_THRESHOLD_NOTE and NO_MASK_NOTE          # the notes exist; their use is tested through the CLI


def test_colour_scale_of_the_first_image_is_said():
    scale = ColourScale()
    assert scale.fix(np.array([[0.2, 0.8]])) == (0.2, 0.8) and scale.note and "FIRST" in scale.note
    assert scale.fix(np.array([[5.0, 9.0]])) == (0.2, 0.8)    # later maps share it
    assert ColourScale((0.0, 3.0)).note is None


def test_class_prediction_files_from_awkward_class_names(tmp_path):
    writer = PredictionWriter(tmp_path / "predictions")
    names = ["../escape", "a/b", "Bottle", "bottle", LONG, "con"]
    for index, name in enumerate(names):
        writer.add([name], [f"img_{index}.png"], torch.tensor([index % 2]), torch.tensor([0.5]), torch.zeros(1, 4, 4))
    written = writer.write()
    assert len(set(written)) == len(names) and all(p.parent == tmp_path / "predictions" for p in written)
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(p.name for p in written)
    for index, path in enumerate(written):
        assert np.load(path)["paths"].tolist() == [f"img_{index}.png"]
    assert not (tmp_path / "escape.npz").exists()


@pytest.fixture(scope="module")
def awkward_dataset(tmp_path_factory):
    """A dataset whose class names and file names are long, hold separators, unicode, and collide by case."""
    root = tmp_path_factory.mktemp("awkward")
    rng = np.random.default_rng(0)
    samples = []
    classes = {"a/b": "ab", "Bottle": "bottle_upper", "bottle": "bottle_lower", "部品": "unicode", LONG[:200]: "long"}
    for name, folder in classes.items():
        for index, label in enumerate((0, 0, 1, 1)):
            stem = f"{LONG[:240]}" if (folder == "long" and index == 0) else f"Img{index}" if index % 2 else f"img{index}"
            relative = f"{folder}/{stem}.png"
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / relative)
            mask = None
            if label:
                mask = f"{folder}/{stem}_mask.png"
                pixels = np.zeros((40, 40), np.uint8)
                pixels[10:20, 10:20] = 255
                Image.fromarray(pixels).save(root / mask)
            samples.append(Sample(relative, label, name, mask, "defect" if label else "good"))
    write_meta_json({"test": samples}, root / "meta.json")
    return root


@pytest.fixture(scope="module")
def tiny_checkpoint(awkward_dataset, tmp_path_factory):
    import anomaly_clip
    from anomaly_clip.clip.config import BackboneConfig

    torch.manual_seed(0)
    detector = anomaly_clip.create_detector("anomalyclip", backbone=BackboneConfig().tiny().with_updates(image_size=56),
                                            device="cpu", features_list=(12, 24))
    return anomaly_clip.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", detector)


def test_test_outputs_from_awkward_names(awkward_dataset, tiny_checkpoint, tmp_path):
    cli.test_main(["--data_path", str(awkward_dataset), "--checkpoint_path", str(tiny_checkpoint), "--save_path",
                   str(tmp_path), "--save_predictions", str(tmp_path / "p"), "--visualize", "--batch_size", "3",
                   *RUN])
    classes = json.loads((tmp_path / "results.json").read_text())["classes"]
    assert len(classes) == 5
    predictions = sorted((tmp_path / "p").iterdir())
    assert len(predictions) == 5 and all(p.suffix == ".npz" for p in predictions)
    panels = [p for p in (tmp_path / "heatmaps").rglob("*") if p.is_file()]
    assert len(panels) == 20 and all(p.suffix == ".jpg" and len(p.name.encode()) <= 255 for p in panels)
    assert all(tmp_path / "heatmaps" in p.parents for p in panels)
    assert len({p.parent.name.casefold() for p in panels}) == 5   # Bottle and bottle apart even ignoring case


def test_a_failing_optional_output_never_loses_the_results(awkward_dataset, tiny_checkpoint, tmp_path, monkeypatch,
                                                           capsys):
    real = outputs.save_panel

    def flaky(panel, path, image_format=None, quality=90):
        if "Img1" in Path(path).name:
            raise OSError(28, "No space left on device")
        return real(panel, path, image_format, quality)

    monkeypatch.setattr(outputs, "save_panel", flaky)
    with pytest.raises(SystemExit) as exit_info:
        cli.run("test", ["--data_path", str(awkward_dataset), "--checkpoint_path", str(tiny_checkpoint), "--save_path",
                         str(tmp_path), "--visualize", "--batch_size", "4", *RUN])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(error) == 1
    assert error[0].startswith("error: 5 output file(s) could not be written, the results were:")
    assert "No space left on device" in error[0]
    assert json.loads((tmp_path / "results.json").read_text())["classes"]      # the metrics were written
    assert len(list((tmp_path / "heatmaps").rglob("*.jpg"))) == 15

    with pytest.raises(SystemExit):
        cli.run("predict", ["--checkpoint_path", str(tiny_checkpoint), "--input", str(awkward_dataset), "--save_path",
                            str(tmp_path / "pred"), "--overlays", "--save_maps", "npz", *RUN])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "could not be written" in error[0]
    with (tmp_path / "pred" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20 + 10 and all(row["score"] for row in rows)  # every image (masks too) scored and kept
    assert len(list((tmp_path / "pred" / "maps").rglob("*.npz"))) == 30
    settings = json.loads((tmp_path / "pred" / "predict_settings.json").read_text())
    assert len(settings["output_failures"]) == 5


def test_predict_outputs_from_long_unicode_and_colliding_file_names(tmp_path):
    import anomaly_clip
    from anomaly_clip.clip.config import BackboneConfig

    torch.manual_seed(0)
    detector = anomaly_clip.create_detector("anomalyclip", backbone=BackboneConfig().tiny().with_updates(image_size=56),
                                            device="cpu")
    checkpoint = anomaly_clip.save_checkpoint(tmp_path / "model.pth", detector)
    inputs = tmp_path / "inputs"
    names = [f"{LONG}.png", "Part.png", "part.png", "défaut ü.png", "x:y.png", "sub dir/é.png"]
    rng = np.random.default_rng(2)
    for name in names:
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8)).save(inputs / name)
    rows = cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(inputs), "--save_path",
                             str(tmp_path / "out"), "--save_maps", "npz", "--map_dtype", "float16", "--overlays",
                             "--overlay_format", "png", *RUN])
    assert len(rows) == len(names) and all(row.score is not None for row in rows)
    maps = sorted((tmp_path / "out" / "maps").rglob("*.npz"))
    overlays = sorted((tmp_path / "out" / "overlays").rglob("*.png"))
    assert len(maps) == len(overlays) == len(names)
    assert len({str(p).casefold() for p in maps}) == len(names)      # Part/part apart even on a case-blind disk
    assert all(len(p.name.encode()) <= 255 for p in maps + overlays)
    assert (tmp_path / "out" / "maps" / "défaut ü.png.npz").is_file()  # readable names kept
    stored = np.load(tmp_path / "out" / "maps" / "défaut ü.png.npz")
    assert stored["map"].dtype == np.float16 and stored["map"].shape == (30, 50)
    by_path = {row.path: row for row in rows}
    assert float(stored["score"]) == pytest.approx(by_path[str(inputs / "défaut ü.png")].score)
    with Image.open(overlays[0]) as overlay:
        assert overlay.format == "PNG"


@pytest.mark.parametrize("shape", [(1, 2000), (3, 1000), (1, 100_000), (2000, 1)])
def test_panels_of_extreme_aspect_ratios_stay_bounded(shape):
    """A 1 x 2000 px image was enlarged 256 times into a 1.5-million-px-wide panel (9.4 GB of memory);
    a 3 x 1000 one exceeded JPEG's 65535 px limit."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    anomaly_map = rng.random(shape, dtype=np.float32)
    panel = anomaly_panel(image, anomaly_map, (0.0, 1.0), PanelContent(header=["score 0.5"], pixel_threshold=0.5,
                                                                       predicted_mask=anomaly_map >= 0.5))
    assert panel.shape[1] <= 3 * PANEL_MAX_SIDE + 8 and panel.shape[0] <= PANEL_MAX_SIDE + 400
    column = (panel.shape[1] - 8) // 3
    if shape[1] > shape[0]:
        assert column == PANEL_MAX_SIDE                  # the long side capped, not dropped


def test_predict_overlays_of_extreme_aspect_ratios_are_bounded_jpegs(tiny_checkpoint, tmp_path):
    inputs = tmp_path / "thin"
    inputs.mkdir()
    rng = np.random.default_rng(1)
    for name, shape in {"line.png": (1, 2000), "thin.png": (3, 1000)}.items():
        Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8)).save(inputs / name)
    cli.predict_main(["--checkpoint_path", str(tiny_checkpoint), "--input", str(inputs), "--save_path",
                      str(tmp_path / "out"), "--overlays", *RUN])
    for name in ("line.png", "thin.png"):
        with Image.open(tmp_path / "out" / "overlays" / f"{name}.jpg") as overlay:
            assert overlay.format == "JPEG" and overlay.width <= 3 * PANEL_MAX_SIDE + 8 and overlay.height < 1000


def test_an_encoder_error_is_not_called_a_full_disk(tmp_path):
    """Pillow raises its encoder errors as OSError without errno; they were reported as 'is the disk
    full?' with 60 GiB free."""
    from anomaly_clip.files import atomic_path

    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "x.jpg") as temporary:
            Image.new("RGB", (70_000, 1)).save(temporary, format="JPEG")
    message = str(caught.value)
    assert message.startswith(f"cannot write {tmp_path / 'x.jpg'} (") and "disk full" not in message
    assert "free there" not in message and list(tmp_path.iterdir()) == []


def test_random_weight_marks_on_every_output(tiny_checkpoint, awkward_dataset, tmp_path):
    calibration = cli.calibrate_main(["--checkpoint_path", str(tiny_checkpoint), "--data_path", str(awkward_dataset),
                                      "--output", str(tmp_path / "cal.json"), *RUN])
    stored = json.loads((tmp_path / "cal.json").read_text())
    assert stored["warning"] == RANDOM_WEIGHTS_WARNING and calibration.provenance["random_init"]
    assert f"Wrote the calibration to {tmp_path / 'cal.json'}" in (tmp_path / "calibrate_log.txt").read_text()
    cli.predict_main(["--checkpoint_path", str(tiny_checkpoint), "--input", str(awkward_dataset / "ab"),
                      "--calibration", str(tmp_path / "cal.json"), "--save_path", str(tmp_path / "out"), *RUN])
    rows = (tmp_path / "out" / "predictions.csv").read_text().splitlines()
    assert rows[0].endswith(",warning") and all(row.endswith(RANDOM_WEIGHTS_WARNING) for row in rows[1:])


def test_test_panels_decide_with_the_calibration(awkward_dataset, tiny_checkpoint, tmp_path, monkeypatch):
    """With a calibration beside the checkpoint, each --visualize panel shows the decision on the
    calibration's per-image score (before: 'no image threshold' next to a log line saying one was loaded)."""
    import shutil

    checkpoint = Path(shutil.copy(tiny_checkpoint, tmp_path / "model.pth"))
    calibration = cli.calibrate_main(["--checkpoint_path", str(checkpoint), "--data_path", str(awkward_dataset),
                                      *RUN])
    headers = []
    monkeypatch.setattr(outputs, "_save_evaluation_panel",
                        lambda path, image_path, values, value_range, content, image_format:
                        headers.append(content.header[0]))
    cli.test_main(["--data_path", str(awkward_dataset), "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "run"), "--visualize", "--batch_size", "3", *RUN])
    threshold = f"(image threshold {calibration.image_threshold:.4g})"
    assert len(headers) == 20 and all(threshold in header for header in headers)
    decided = [header.split(" | ")[-1].split(" (")[0] for header in headers]
    assert set(decided) <= {"ANOMALOUS", "normal"}
