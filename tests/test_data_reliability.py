"""Masks and labels never silently lost or inverted, images read as displayed, metadata values
checked for their type: the data rows of docs/reliability.md."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_clip.cli.main import run
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import MetadataError, load_samples, read_jsonl, read_meta_json
from anomaly_clip.data.imaging import IMAGE_SUFFIXES, UnreadableImageError, read_binary_mask, read_rgb
from anomaly_clip.data.records import Sample
from anomaly_clip.engine import inference
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.metrics import AnomalyEvaluator
from generate_dataset_json import generate

SIZE = 56
DEFECT = (slice(16, 40), slice(20, 44))  # rows, columns of the defect in a 64 x 64 mask


def defect_array(value=255, shape=(64, 64)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[DEFECT] = value
    return mask


def noise(seed: int, shape=(64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def encoded(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    return Image.open(buffer)


# ---- masks: any non-zero label is defect -----------------------------------------------------------

def _rgb_label(value) -> Image.Image:
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[DEFECT] = value
    return Image.fromarray(mask)


def _palette_label() -> Image.Image:
    image = Image.fromarray(defect_array(1), mode="L").convert("P")
    image.putpalette([0, 0, 0, 1, 0, 0] + [0, 0, 0] * 254)
    return image


def _transparent_background() -> Image.Image:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255  # white colour everywhere, but only the defect is opaque
    rgba[DEFECT + (slice(3, 4),)] = 255
    return Image.fromarray(rgba)


LABEL_MASKS = {
    "rgb_1_0_0": lambda: _rgb_label((1, 0, 0)),
    "rgb_0_0_7": lambda: _rgb_label((0, 0, 7)),
    "gray_1": lambda: Image.fromarray(defect_array(1)),
    "sixteen_bit_1": lambda: Image.fromarray(defect_array(1).astype(np.uint16)),
    "palette_1_0_0": _palette_label,
    "bilevel": lambda: Image.fromarray(defect_array(255)).convert("1"),
    "transparent_background": _transparent_background,
}


@pytest.mark.parametrize("kind", sorted(LABEL_MASKS))
def test_label_masks_of_every_storage_mode_keep_their_defect_pixels(tmp_path, kind):
    path = tmp_path / "mask.png"
    LABEL_MASKS[kind]().save(path)
    assert np.array_equal(read_binary_mask(path), defect_array() > 0)


def _custom_tree(root: Path, mask: Image.Image) -> Path:
    """One class of 3 normal and 3 anomalous images in the ``custom`` layout, every anomalous
    image with ``mask``; metadata written by the generator."""
    for index in range(3):
        (root / "part" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(index)).save(root / "part" / "good" / f"{index}.png")
        (root / "part" / "ground_truth" / "scratch").mkdir(parents=True, exist_ok=True)
        (root / "part" / "scratch").mkdir(parents=True, exist_ok=True)
        Image.fromarray(noise(10 + index)).save(root / "part" / "scratch" / f"{index}.png")
        mask.save(root / "part" / "ground_truth" / "scratch" / f"{index}_mask.png")
    generate("custom", root)
    return root


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone, tmp_path_factory):
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(features_list=(12, 24)))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pth", detector)


def _test_command(root: Path, checkpoint: Path, out: Path) -> dict:
    run("test", ["--data_path", str(root), "--checkpoint_path", str(checkpoint), "--save_path", str(out),
                 "--device", "cpu", "--num_workers", "0"])
    return json.loads((out / "results.json").read_text())


def test_rgb_label_mask_counts_as_defect_pixels_in_evaluation(tmp_path, checkpoint):
    """Generator -> dataset -> test command: masks holding (1, 0, 0) on the defect give the same
    pixel metrics as the same masks stored as 0/255 grayscale (before: no defect pixel, N/A)."""
    rgb = _custom_tree(tmp_path / "rgb", _rgb_label((1, 0, 0)))
    gray = _custom_tree(tmp_path / "gray", Image.fromarray(defect_array(255)))
    item = AnomalyDataset(load_samples(rgb, "test"), rgb, image_size=SIZE)[3]
    assert item["label"] == 1 and item["mask"].sum() > 0.1 * SIZE * SIZE
    rgb_results = _test_command(rgb, checkpoint, tmp_path / "out_rgb")
    gray_results = _test_command(gray, checkpoint, tmp_path / "out_gray")
    pixel = [key for key in rgb_results["classes"][0] if key.lower().startswith("pixel")]
    assert pixel and all(rgb_results["classes"][0][key] is not None for key in pixel)
    assert rgb_results["classes"] == gray_results["classes"]


def test_lossy_masks_use_the_midpoint_of_their_strongest_value(tmp_path):
    Image.fromarray(defect_array(255)).save(tmp_path / "mask.jpg", quality=30)
    assert np.array_equal(read_binary_mask(tmp_path / "mask.jpg"), defect_array() > 0)
    Image.fromarray(defect_array(200)).save(tmp_path / "mask200.jpg", quality=75)
    assert np.array_equal(read_binary_mask(tmp_path / "mask200.jpg"), defect_array() > 0)
    Image.fromarray(defect_array(255)).save(tmp_path / "jpeg_named.png", format="JPEG", quality=30)
    assert np.array_equal(read_binary_mask(tmp_path / "jpeg_named.png"), defect_array() > 0)  # by content


@pytest.mark.parametrize("fmt, options", [("JPEG", {"quality": 95}), ("WEBP", {"quality": 100})])
def test_lossy_zero_one_masks_are_refused_with_the_reason(tmp_path, fmt, options):
    path = tmp_path / f"mask.{fmt.lower()}"
    Image.fromarray(defect_array(1)).save(path, fmt, **options)
    stored = np.asarray(Image.open(path).convert("L"))
    if stored.max() == 0:  # the encoder erased the labels: an empty mask, warned about per file (below)
        assert not read_binary_mask(path).any()
        return
    with pytest.raises(UnreadableImageError, match="losslessly") as caught:
        read_binary_mask(path)
    assert str(path) in str(caught.value)


def test_lossless_webp_label_mask_is_exact(tmp_path):
    Image.fromarray(defect_array(1)).save(tmp_path / "mask.webp", lossless=True)
    assert np.array_equal(read_binary_mask(tmp_path / "mask.webp"), defect_array() > 0)


def test_anomalous_image_with_empty_mask_is_a_warning_naming_the_file(tmp_path, caplog):
    Image.fromarray(noise(0)).save(tmp_path / "a.png")
    Image.fromarray(noise(1)).save(tmp_path / "b.png")
    Image.fromarray(defect_array(1)).save(tmp_path / "zero_one.jpg", quality=50)  # JPEG erases the 0/1 labels
    tiny = np.zeros((640, 640), np.uint8)
    tiny[300, 300] = 255  # one pixel of 640 x 640: gone at 56 x 56
    Image.fromarray(tiny).save(tmp_path / "tiny.png")
    dataset = AnomalyDataset([Sample("a.png", 1, "part", "zero_one.jpg"), Sample("b.png", 1, "part", "tiny.png")],
                             tmp_path, image_size=SIZE)
    with caplog.at_level(logging.WARNING, logger="anomaly_clip.data.dataset"):
        dataset[0], dataset[0], dataset[1]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2  # once per file, not per read
    assert str(tmp_path / "zero_one.jpg") in messages[0] and "no defect pixel" in messages[0]
    assert str(tmp_path / "tiny.png") in messages[1] and "vanish" in messages[1]
    caplog.clear()
    later = AnomalyDataset(dataset.samples, tmp_path, image_size=SIZE)
    later.set_epoch(1)  # a DataLoader worker of a later training epoch: warned in epoch 0 already
    with caplog.at_level(logging.WARNING, logger="anomaly_clip.data.dataset"):
        later[0]
        AnomalyDataset(dataset.samples, tmp_path, image_size=SIZE).validate(decode=True, workers=1)
    assert sum("zero_one.jpg" in record.getMessage() for record in caplog.records) == 1


def _inverted_batch(inverted: bool):
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[2:, 4:8, 4:8] = True
    if inverted:
        masks[2:] = ~masks[2:]
    labels = torch.tensor([0, 0, 1, 1])
    maps = torch.rand(4, 16, 16, generator=torch.Generator().manual_seed(0))
    return labels, labels.float(), maps, masks


@pytest.mark.parametrize("inverted", [True, False])
def test_inverted_masks_of_a_class_are_warned_about(caplog, inverted):
    evaluator = AnomalyEvaluator()
    evaluator.update(["part"] * 4, *_inverted_batch(inverted))
    with caplog.at_level(logging.WARNING, logger="anomaly_clip.metrics.evaluator"):
        evaluator.compute()
    warned = [r.getMessage() for r in caplog.records if "inverted" in r.getMessage()]
    assert len(warned) == int(inverted)
    if inverted:
        assert "class part" in warned[0] and "94%" in warned[0]


# ---- images as displayed: EXIF orientation, multi-frame files --------------------------------------

def _rotated_jpeg(path: Path) -> np.ndarray:
    """A JPEG storing an upright picture rotated by 90 degrees plus orientation tag 6 (as phones
    do); returns the upright picture."""
    upright = np.zeros((60, 40, 3), np.uint8)
    upright[:20] = (255, 0, 0)  # red at the top as displayed
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(path, quality=95, exif=exif.tobytes())
    return upright


def test_exif_rotated_jpeg_is_read_upright_by_datasets_and_predict(tmp_path):
    upright = _rotated_jpeg(tmp_path / "photo.jpg")
    upright_mask = defect_array(255, (60, 40))
    mask = Image.fromarray(upright_mask).transpose(Image.Transpose.ROTATE_90)
    exif = mask.getexif()
    exif[0x0112] = 6
    mask.save(tmp_path / "mask.png", exif=exif.tobytes())
    image = np.asarray(read_rgb(tmp_path / "photo.jpg"))
    assert image.shape == upright.shape and np.abs(image.astype(int) - upright).mean() < 3
    assert np.array_equal(read_binary_mask(tmp_path / "mask.png"), upright_mask > 0)
    item = AnomalyDataset([Sample("photo.jpg", 1, "part", "mask.png")], tmp_path, image_size=SIZE)[0]
    files = inference.ImageFiles([tmp_path / "photo.jpg"], SIZE)[0]
    assert files["size"] == (60, 40) and torch.equal(files["image"], item["image"])
    assert item["image"][0, :SIZE // 4].mean() > item["image"][0, -SIZE // 4:].mean()  # red stays on top


def _animation(path: Path) -> None:
    frames = [Image.fromarray(np.full((12, 10, 3), value, np.uint8)) for value in (40, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def test_animated_gif_scores_its_first_frame_with_a_warning_naming_it(tmp_path, caplog):
    _animation(tmp_path / "clip.gif")
    Image.fromarray(np.full((12, 10, 3), 40, np.uint8)).save(tmp_path / "still.gif")
    with caplog.at_level(logging.WARNING, logger="anomaly_clip.data.imaging"):
        first = np.asarray(read_rgb(tmp_path / "clip.gif"))
        read_rgb(tmp_path / "clip.gif")
        still = np.asarray(read_rgb(tmp_path / "still.gif"))
    assert np.array_equal(first, still)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and str(tmp_path / "clip.gif") in warned[0] and "2 frames" in warned[0]


def test_predict_warns_once_about_an_animated_gif_with_loader_workers(tmp_path, checkpoint, monkeypatch):
    """The warning was printed twice in one ``predict``: tqdm.auto called ``iter()`` on the
    DataLoader twice, so two sets of workers decoded the first batches."""
    _animation(tmp_path / "clip.gif")
    iterators = []
    real_iter = torch.utils.data.DataLoader.__iter__
    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", lambda self: iterators.append(1) or real_iter(self))
    rows = inference.predict_files(_loaded(checkpoint), [tmp_path / "clip.gif"], num_workers=2)
    assert len(rows) == 1 and rows[0].score is not None and len(iterators) == 1
    monkeypatch.undo()
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "anomaly_clip", "predict", "--checkpoint_path", str(checkpoint),
                           "--input", str(tmp_path / "clip.gif"), "--save_path", str(tmp_path / "out"),
                           "--num_workers", "2", "--device", "cpu"], capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (done.stdout + done.stderr).count("has 2 frames") == 1


def _loaded(checkpoint):
    from anomaly_clip.engine.checkpoint import load

    return load(checkpoint, device="cpu")


def test_a_folder_of_gifs_is_a_folder_of_images(tmp_path):
    assert ".gif" in IMAGE_SUFFIXES
    for name in ("a.gif", "b.gif"):
        _animation(tmp_path / name)
    assert [p.name for p in inference.expand_inputs([tmp_path])] == ["a.gif", "b.gif"]


# ---- metadata values of the wrong type: one line naming key, entry and file ----------------------

META_ENTRY = {"img_path": "a.png", "mask_path": "", "cls_name": "part", "specie_name": "good", "anomaly": 0}
BAD_META = [
    ("img_path", 5, "must be a non-empty string"),
    ("anomaly", "1", "must be the number 0 (normal) or 1"),
    ("anomaly", True, "must be the number 0 (normal) or 1"),
    ("mask_path", 3, "must be a string"),
    ("cls_name", None, "must be a non-empty string"),
    ("cls_name", "<missing>", "is missing"),
]


@pytest.mark.parametrize("key, value, problem", BAD_META)
def test_wrong_metadata_values_name_the_key_the_entry_and_the_file(tmp_path, key, value, problem):
    entry = dict(META_ENTRY)
    if value == "<missing>":
        del entry[key]
    else:
        entry[key] = value
    path = tmp_path / "meta.json"
    path.write_text(json.dumps({"test": {"part": [META_ENTRY, entry]}}))
    with pytest.raises(MetadataError) as caught:
        read_meta_json(path)
    message = str(caught.value)
    assert f"key '{key}' {problem}" in message and str(path) in message and "entry 2" in message
    assert "\n" not in message


@pytest.mark.parametrize("line, key", [('{"image_path": 7, "label": 0, "class_name": "x"}', "image_path"),
                                       ('{"image_path": "a.png", "label": "0", "class_name": "x"}', "label"),
                                       ('{"image_path": "a.png", "label": 1}', "class_name")])
def test_wrong_jsonl_values_name_the_key_and_the_line(tmp_path, line, key):
    path = tmp_path / "test.jsonl"
    path.write_text('{"image_path": "b.png", "label": 0, "class_name": "x"}\n' + line + "\n")
    with pytest.raises(MetadataError, match=f"line 2: key '{key}'"):
        read_jsonl(path)


def test_wrong_metadata_value_is_one_error_line_on_the_command_line(tmp_path, checkpoint, capsys):
    (tmp_path / "meta.json").write_text(json.dumps({"test": {"part": [dict(META_ENTRY, img_path=12)]}}))
    with pytest.raises(SystemExit) as caught:
        run("test", ["--data_path", str(tmp_path), "--checkpoint_path", str(checkpoint),
                     "--save_path", str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"])
    assert caught.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    last = stderr.rstrip("\n").split("\n")[-1]
    assert last.startswith("error: ") and "key 'img_path'" in last and str(tmp_path / "meta.json") in last
