"""Pseudo-anomalies on normal-only data: exact painted masks, seeded batches, the feature-cache
rule, and a normal-only folder trained end to end by every method."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_clip import cli
from anomaly_clip.data.augment import AAClipAugmentation
from anomaly_clip.data.dataset import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, AnomalyDataset
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.pseudo_anomaly import (
    PSEUDO_DEFECT_TYPES,
    PseudoAnomalies,
    PseudoAnomalyDataset,
    apply_pseudo_anomalies,
    paint_defect,
)
from anomaly_clip.data.synthetic import MIN_CHANGE, generate_synthetic_dataset, image_rng, make_sample
from anomaly_clip.engine.feature_cache import EpochLoader, choose_cache_mode
from anomaly_clip.methods.anomalyclip.config import AnomalyCLIPConfig
from anomaly_clip.methods.anomalyclip.model import AnomalyCLIP
from anomaly_clip import fit
from anomaly_clip.methods.anomalyclip.config import AnomalyCLIPTraining
from generate_dataset_json.cli import generate

TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu",
        "--num_workers", "0"]

from conftest import train_config


@pytest.fixture(scope="module")
def normal_folder(tmp_path_factory) -> str:
    """A ``folders`` dataset of good images only (no masks), as a user would have."""
    synthetic = tmp_path_factory.mktemp("synthetic")
    generate_synthetic_dataset(synthetic, classes=["washer"], n_train=6, n_test_normal=1, n_test_anomalous=1,
                               image_size=64, seed=2)
    root = tmp_path_factory.mktemp("normals")
    (root / "good").mkdir()
    for path in sorted((synthetic / "washer" / "train" / "good").glob("*.png")):
        shutil.copy(path, root / "good" / path.name)
    generate("folders", root, normal_dir="good", split="train", class_name="washer")
    return str(root)


def pseudo_dataset(root: str, probability: float = 0.5, seed: int = 7, image_size: int = 64,
                   augment=None) -> PseudoAnomalyDataset:
    samples = load_samples(root, split="train")
    return PseudoAnomalies(probability, seed=seed).apply(AnomalyDataset(samples, root, image_size=image_size,
                                                                        augment=augment))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return torch.round((image * std + mean) * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.mark.parametrize("kind", PSEUDO_DEFECT_TYPES)
def test_painted_mask_is_exactly_the_changed_pixels(kind):
    image = make_sample("tile", None, 96, image_rng(1, "tile", "train", None, 0)).image
    donor = make_sample("tile", None, 96, image_rng(1, "tile", "train", None, 1)).image
    painted, mask = paint_defect(image, kind, np.random.default_rng(3), donor)
    changed = np.abs(painted.astype(int) - image.astype(int)).max(axis=-1)
    assert mask.any()
    np.testing.assert_array_equal(changed > 0, mask)
    assert changed[mask].min() >= MIN_CHANGE


def test_cut_paste_needs_a_donor_and_kinds_are_checked():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="donor"):
        paint_defect(image, "cutpaste", np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown defect"):
        paint_defect(image, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="square"):
        paint_defect(np.zeros((32, 40, 3), np.uint8), "blob", np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PseudoAnomalies(1.5)
    with pytest.raises(ValueError, match="subset"):
        PseudoAnomalies(0.5, kinds=("dent",))


def test_dataset_items_paint_exact_masks(normal_folder):
    dataset = pseudo_dataset(normal_folder, probability=1.0)
    plain = AnomalyDataset(load_samples(normal_folder, split="train"), normal_folder, image_size=64)
    kinds = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(len(dataset)):
            item, original = dataset[index], plain[index]
            kinds.add(dataset.defect_of(index))
            assert item["label"].item() == 1 and bool(item["pseudo_anomaly"])
            changed = np.any(to_uint8(item["image"]) != to_uint8(original["image"]), axis=-1)
            np.testing.assert_array_equal(changed, item["mask"][0].numpy() > 0.5)
    assert len(kinds) >= 4
    assert dataset.has_masks and dataset.varies_by_epoch


def test_fraction_and_untouched_images(normal_folder):
    dataset = pseudo_dataset(normal_folder, probability=0.5)
    painted = []
    for epoch in range(40):
        dataset.set_epoch(epoch)
        painted += [dataset.defect_of(i) is not None for i in range(len(dataset))]
    assert 0.4 < np.mean(painted) < 0.6
    plain = AnomalyDataset(load_samples(normal_folder, split="train"), normal_folder, image_size=64)
    dataset.set_epoch(0)
    for index in range(len(dataset)):
        if dataset.defect_of(index) is None:
            item = dataset[index]
            assert item["label"].item() == 0 and item["mask"].sum() == 0
            torch.testing.assert_close(item["image"], plain[index]["image"], rtol=0, atol=0)


def batches(dataset, epoch: int, seed: int = 5):
    loader = EpochLoader(dataset, batch_size=3, seed=seed)
    loader.set_epoch(epoch)
    return list(loader)


def test_same_seed_same_batches_other_epoch_other_batches(normal_folder):
    augment = AAClipAugmentation(color_jitter=True, seed=11)
    first = batches(pseudo_dataset(normal_folder, augment=augment), epoch=1)
    again = batches(pseudo_dataset(normal_folder, augment=augment), epoch=1)
    for one, two in zip(first, again):
        for key in ("image", "mask", "label", "pseudo_anomaly", "index"):
            torch.testing.assert_close(one[key], two[key], rtol=0, atol=0)
    later = batches(pseudo_dataset(normal_folder, augment=augment), epoch=2)
    assert any(not torch.equal(a["mask"], b["mask"]) for a, b in zip(first, later))
    other_seed = batches(pseudo_dataset(normal_folder, seed=8, augment=augment), epoch=1)
    assert any(not torch.equal(a["mask"], b["mask"]) for a, b in zip(first, other_seed))


def test_feature_cache_is_refused_for_data_that_changes_every_epoch(normal_folder, tiny_backbone, tmp_path,
                                                                    monkeypatch):
    assert choose_cache_mode("auto", 100, 10, torch.device("cpu"), varies_by_epoch=True) == "off"
    assert choose_cache_mode("auto", 100, 10, torch.device("cpu")) == "host"
    with pytest.raises(ValueError, match="change every epoch"):
        choose_cache_mode("host", 100, 10, torch.device("cpu"), varies_by_epoch=True)
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2, features_list=(24,)))
    dataset = pseudo_dataset(normal_folder, image_size=56)
    with pytest.raises(ValueError, match="change every epoch"):
        fit(detector, dataset, train_config(tmp_path, AnomalyCLIPTraining(epoch=1, feature_cache="device")))
    seen = []
    original = PseudoAnomalyDataset.__getitem__

    def counting(self, index):
        seen.append((self.epoch, index))
        return original(self, index)

    monkeypatch.setattr(PseudoAnomalyDataset, "__getitem__", counting)
    fit(detector, dataset, train_config(tmp_path, AnomalyCLIPTraining(epoch=2, batch_size=3, feature_cache="auto"),
                                        export_official=False))
    assert sorted(seen) == [(epoch, i) for epoch in range(2) for i in range(len(dataset))]


def test_normal_only_data_without_pseudo_anomalies_is_refused(normal_folder, tiny_backbone, tmp_path):
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2, features_list=(24,)))
    plain = AnomalyDataset(load_samples(normal_folder, split="train"), normal_folder, image_size=56)
    with pytest.raises(ValueError, match="--synthesize_anomalies"):
        fit(detector, plain, train_config(tmp_path, AnomalyCLIPTraining(epoch=1)))
    assert apply_pseudo_anomalies(plain, None) is plain and PseudoAnomalies(0.0).apply(plain) is plain


@pytest.mark.parametrize("method, flags, last", [
    ("anomalyclip", ["--epoch", "1", "--batch_size", "3", "--n_ctx", "4", "--depth", "3", "--t_n_ctx", "2",
                     "--features_list", "24"], "epoch_1.pth"),
    ("aaclip", ["--text_epoch", "1", "--image_epoch", "1", "--text_batch_size", "3", "--image_batch_size", "3"],
     "image_epoch_1.pth"),
    ("anomalyclip_adapters", ["--prompt_epoch", "1", "--prompt_batch_size", "3", "--image_epoch", "1",
                              "--image_batch_size", "3", "--n_ctx", "4", "--depth", "3", "--t_n_ctx", "2"],
     "image_epoch_1.pth"),
])
def test_normal_only_folder_trains_end_to_end(method, flags, last, normal_folder, tmp_path):
    path = cli.train_main(["--method", method, "--train_data_path", normal_folder, "--split", "train",
                           "--save_path", str(tmp_path), "--synthesize_anomalies", "0.5", "--seed", "4",
                           "--no-export-official", *flags, *TINY])
    assert path == Path(tmp_path) / last and path.is_file()
    payload = torch.load(path, map_location="cpu", weights_only=False)
    assert payload["run_settings"]["synthesize_anomalies"] == 0.5
    log = (Path(tmp_path) / "log.txt").read_text()
    assert "Pseudo-anomalies: 50% of 6 normal images" in log


def test_synthesize_defects_needs_a_fraction(normal_folder, tmp_path):
    with pytest.raises(ValueError, match="--synthesize_anomalies"):
        cli.train_main(["--train_data_path", normal_folder, "--split", "train", "--save_path", str(tmp_path),
                        "--synthesize_defects", "blob", *TINY])
