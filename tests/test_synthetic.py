"""The synthetic dataset: layout and metadata, determinism by seed, exact defect masks."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from anomaly_clip.cli.data import synthesize_main as main
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import load_samples, read_meta_json
from anomaly_clip.data.registry import scan_dataset
from anomaly_clip.data.synthetic import (
    DEFECT_TYPES,
    MIN_CHANGE,
    RENDERERS,
    SYNTHETIC_CLASSES,
    generate_synthetic_dataset,
    image_rng,
    make_sample,
)

SMALL = dict(n_train=2, n_test_normal=2, n_test_anomalous=5, image_size=48)


def read(path):
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), seed=5, **SMALL)


def test_layout_counts_and_metadata(dataset_root):
    metadata = read_meta_json(f"{dataset_root}/meta.json")
    assert set(metadata) == {"train", "test"}
    for name in SYNTHETIC_CLASSES:
        train = [s for s in metadata["train"] if s.class_name == name]
        test = [s for s in metadata["test"] if s.class_name == name]
        assert len(train) == 2 and all(s.label == 0 for s in train)
        assert [s.label for s in test].count(0) == 2 and [s.label for s in test].count(1) == 5
        assert sorted(s.specie_name for s in test if s.label) == sorted(DEFECT_TYPES)
    sample = next(s for s in metadata["test"] if s.class_name == "pill" and s.specie_name == "crack")
    assert sample.image_path == "pill/test/crack/000.png"
    assert sample.mask_path == "pill/ground_truth/crack/000_mask.png"
    assert scan_dataset("synthetic", dataset_root) == {
        split: sorted(samples, key=lambda s: s.class_name) for split, samples in metadata.items()}


def test_images_load_with_their_masks(dataset_root):
    samples = load_samples(dataset_root, "test")
    dataset = AnomalyDataset(samples, dataset_root, image_size=32)
    dataset.validate(decode=True)
    for index, sample in enumerate(samples):
        assert bool(dataset[index]["mask"].any()) == bool(sample.label)


def test_masks_are_exactly_the_changed_pixels(dataset_root):
    for sample in load_samples(dataset_root, "test"):
        if not sample.label:
            continue
        index = int(sample.image_path.rsplit("/", 1)[1][:3])
        rendered = make_sample(sample.class_name, sample.specie_name, SMALL["image_size"],
                               image_rng(5, sample.class_name, "test", sample.specie_name, index))
        image = read(f"{dataset_root}/{sample.image_path}").astype(int)
        mask = read(f"{dataset_root}/{sample.mask_path}")
        assert set(np.unique(mask).tolist()) == {0, 255}
        assert np.array_equal(image, rendered.image)
        change = np.abs(image - rendered.clean.astype(int)).max(axis=-1)
        assert np.array_equal(mask > 0, change > 0)
        assert change[mask > 0].min() >= MIN_CHANGE


@pytest.mark.parametrize("name", SYNTHETIC_CLASSES)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_every_defect_on_every_class_lies_on_the_object(name, defect):
    for index in range(3):
        sample = make_sample(name, defect, 64, image_rng(0, name, "test", defect, index))
        scene = RENDERERS[name](64, image_rng(0, name, "test", defect, index))
        assert sample.mask.sum() >= 8
        assert not (sample.mask & ~scene.support).any()
        assert np.array_equal(sample.mask, (sample.image != sample.clean).any(axis=-1))


def test_deterministic_by_seed(tmp_path):
    first = generate_synthetic_dataset(tmp_path / "a", classes=["washer", "fabric"], seed=3, **SMALL)
    second = generate_synthetic_dataset(tmp_path / "b", classes=["washer", "fabric"], seed=3, **SMALL)
    other = generate_synthetic_dataset(tmp_path / "c", classes=["washer", "fabric"], seed=4, **SMALL)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 2 * (2 + 2 + 5 + 5)
    assert all(np.array_equal(read(f"{first}/{f}"), read(f"{second}/{f}")) for f in files)
    assert (tmp_path / "a/meta.json").read_text() == (tmp_path / "b/meta.json").read_text()
    assert not all(np.array_equal(read(f"{first}/{f}"), read(f"{other}/{f}")) for f in files)
    normals = [read(f"{first}/washer/train/good/{i:03d}.png") for i in range(2)]
    assert not np.array_equal(*normals)


def test_counts_do_not_change_other_images_and_rerun_replaces_files(tmp_path):
    root = tmp_path / "data"
    generate_synthetic_dataset(root, classes=["tile"], seed=1, n_train=1, n_test_normal=1, n_test_anomalous=10,
                               image_size=48)
    before = read(root / "tile/test/scratch/000.png")
    generate_synthetic_dataset(root, classes=["tile"], seed=1, n_train=3, n_test_normal=1, n_test_anomalous=5,
                               image_size=48)
    assert np.array_equal(before, read(root / "tile/test/scratch/000.png"))
    assert not (root / "tile/test/scratch/001.png").exists()
    assert len(load_samples(root, "test")) == 6
    assert json.loads((root / "synthetic.json").read_text())["n_test_anomalous"] == 5


def test_refuses_to_overwrite_foreign_folders(tmp_path):
    (tmp_path / "pill").mkdir()
    (tmp_path / "pill" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="pill"):
        generate_synthetic_dataset(tmp_path, classes=["pill"], **SMALL)
    generate_synthetic_dataset(tmp_path, classes=["pill"], overwrite=True, **SMALL)
    assert not (tmp_path / "pill" / "mine.txt").exists()


def test_argument_checks():
    with pytest.raises(ValueError, match="unknown synthetic classes"):
        generate_synthetic_dataset("/nonexistent", classes=["teapot"])
    with pytest.raises(ValueError, match="unknown defect"):
        make_sample("pill", "dent", 32, np.random.default_rng(0))


def test_command_line(tmp_path):
    root = main(["--root", str(tmp_path), "--classes", "mesh", "--image-size", "40", "--n-train", "1",
                 "--n-test-normal", "1", "--n-test-anomalous", "2", "--format", "both", "--seed", "2"])
    assert read(f"{root}/mesh/test/blob/000.png").shape == (40, 40, 3)
    assert len(load_samples(root, "test")) == 3 and (tmp_path / "test.jsonl").is_file()
