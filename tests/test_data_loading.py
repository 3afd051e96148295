"""Loading: reference preprocessing, storage modes, mask edge cases, clear errors, few-shot
subsets and AA-CLIP's paired augmentation."""
from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from anomaly_clip.data.augment import AAClipAugmentation
from anomaly_clip.data.dataset import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    AnomalyDataset,
    DatasetValidationError,
    MissingMaskError,
    image_transform,
    load_image,
    mask_to_tensor,
)
from anomaly_clip.data.fewshot import few_shot_subset
from anomaly_clip.data.imaging import UnreadableImageError, read_binary_mask, read_rgb
from anomaly_clip.data.records import Sample

SIZE = 24


def reference_image_pipeline(size):
    """The reference code's torchvision preprocessing."""
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.ToTensor(),
        transforms.Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    ])


def random_rgb(height=37, width=53, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def square_mask(height=37, width=53):
    mask = np.zeros((height, width), np.uint8)
    mask[5:20, 10:30] = 255
    return mask


@pytest.fixture
def tree(tmp_path):
    Image.fromarray(random_rgb()).save(tmp_path / "good.png")
    Image.fromarray(random_rgb(seed=1)).save(tmp_path / "bad.png")
    Image.fromarray(square_mask()).save(tmp_path / "bad_mask.png")
    return tmp_path


def test_image_tensor_equals_reference_pipeline(tree):
    expected = reference_image_pipeline(SIZE)(Image.open(tree / "good.png").convert("RGB"))
    assert torch.equal(load_image(tree / "good.png", SIZE), expected)
    assert torch.equal(image_transform(SIZE)(Image.open(tree / "good.png")), expected)
    dataset = AnomalyDataset([Sample("good.png", 0, "x")], tree, image_size=SIZE)
    assert torch.equal(dataset[0]["image"], expected)


def test_masks_match_both_references(tree):
    raw = Image.open(tree / "bad_mask.png")
    binary = Image.fromarray((np.array(raw.convert("L")) > 0).astype(np.uint8) * 255)
    anomalyclip = transforms.Compose([transforms.Resize((SIZE, SIZE)), transforms.ToTensor()])(binary)
    anomalyclip = (anomalyclip > 0.5).float()
    aaclip = transforms.Compose([transforms.Resize((SIZE, SIZE), transforms.InterpolationMode.NEAREST),
                                 transforms.ToTensor()])(raw.convert("L"))
    aaclip = (aaclip != 0).float()
    sample = [Sample("bad.png", 1, "x", "bad_mask.png")]
    assert torch.equal(AnomalyDataset(sample, tree, SIZE, "bilinear")[0]["mask"], anomalyclip)
    assert torch.equal(AnomalyDataset(sample, tree, SIZE, "nearest")[0]["mask"], aaclip)
    assert anomalyclip.sum() > 0


def test_item_contents_and_default_collate(tree):
    samples = [Sample("good.png", 0, "widget"), Sample("bad.png", 1, "widget", "bad_mask.png", "crack")]
    dataset = AnomalyDataset(samples, tree, image_size=SIZE)
    item = dataset[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
    assert item["mask"].dtype == torch.float32 and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["label"].dtype == torch.int64 and item["label"].item() == 1
    assert item["path"] == str(tree / "bad.png") and item["index"] == 1 and item["class_name"] == "widget"
    assert not dataset[0]["mask"].any()
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, SIZE, SIZE) and batch["mask"].shape == (2, 1, SIZE, SIZE)
    assert batch["label"].tolist() == [0, 1] and batch["index"].tolist() == [0, 1]
    assert batch["class_name"] == ["widget", "widget"]
    assert dataset.has_masks and dataset.class_names == ["widget"]


def test_grayscale_and_palette_images(tmp_path):
    gray = random_rgb()[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb = read_rgb(tmp_path / "gray.png")
    assert rgb.mode == "RGB" and all(np.array_equal(np.asarray(rgb)[..., c], gray) for c in range(3))
    palette = Image.fromarray(random_rgb()).convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(np.asarray(read_rgb(tmp_path / "palette.png")),
                          np.asarray(Image.open(tmp_path / "palette.png").convert("RGB")))
    assert load_image(tmp_path / "gray.png", SIZE).shape == (3, SIZE, SIZE)


def test_transparency_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 128, 0, 255]] * 4
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    values = np.asarray(read_rgb(tmp_path / "rgba.png"))[0, :, 0]
    assert values.tolist() == [200, round(200 * 128 / 255), 0, 200]


def test_sixteen_bit_and_float_scans(tmp_path):
    scan = np.array([[0, 65535], [32768, 257 * 10]], np.uint16)
    Image.fromarray(scan).save(tmp_path / "scan16.png")
    assert np.asarray(read_rgb(tmp_path / "scan16.png"))[..., 0].tolist() == [[0, 255], [128, 10]]
    dark = np.array([[0, 1000], [2000, 4000]], np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert np.asarray(read_rgb(tmp_path / "dark16.png", "minmax"))[..., 0].tolist() == [[0, 64], [128, 255]]
    Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)).save(tmp_path / "scan.tif")
    assert np.asarray(read_rgb(tmp_path / "scan.tif"))[..., 0].tolist() == [[0, 128], [255, 64]]
    assert load_image(tmp_path / "scan16.png", SIZE).shape == (3, SIZE, SIZE)


def test_mask_of_another_size_is_resized(tmp_path):
    Image.fromarray(random_rgb(40, 40)).save(tmp_path / "img.png")
    small = np.zeros((10, 10), np.uint8)
    small[2:6, 2:6] = 255
    Image.fromarray(small).save(tmp_path / "mask.png")
    item = AnomalyDataset([Sample("img.png", 1, "x", "mask.png")], tmp_path, image_size=20)[0]
    assert torch.equal(item["mask"], mask_to_tensor(small > 0, 20))
    assert item["mask"][0, 4:12, 4:12].all() and item["mask"].sum() == 64


def test_label_value_and_jpeg_masks(tmp_path):
    labels = np.zeros((16, 16), np.uint8)
    labels[4:8, 4:8] = 1
    Image.fromarray(labels).save(tmp_path / "labels.png")
    assert read_binary_mask(tmp_path / "labels.png").sum() == 16
    noisy = np.zeros((16, 16), np.uint8)
    noisy[4:12, 4:12] = 255
    Image.fromarray(noisy).save(tmp_path / "mask.jpg", quality=30)
    assert np.array_equal(read_binary_mask(tmp_path / "mask.jpg"), noisy > 0)
    assert np.asarray(Image.open(tmp_path / "mask.jpg")).astype(bool).sum() > 64  # JPEG noise exists


def test_missing_mask_is_an_error_unless_image_level(tree):
    samples = [Sample("bad.png", 1, "x", "bad_mask.png"), Sample("good.png", 1, "x")]
    with pytest.raises(MissingMaskError, match=r"good\.png.*image_level_only"):
        AnomalyDataset(samples, tree, SIZE)[1]
    lenient = AnomalyDataset(samples, tree, SIZE, image_level_only=True)
    assert not lenient[0]["mask"].any() and not lenient.has_masks
    inferred = AnomalyDataset([Sample("good.png", 1, "x")], tree, SIZE)
    assert inferred.image_level_only and not inferred[0]["mask"].any()
    gone = AnomalyDataset([Sample("bad.png", 1, "x", "nowhere_mask.png")], tree, SIZE)
    with pytest.raises(MissingMaskError, match=r"nowhere_mask\.png.*bad\.png"):
        gone[0]


def first_batch_error(loader: DataLoader) -> str:
    """Message of the error raised by the first batch; the loader is released before returning."""
    try:
        next(iter(loader))
    except UnreadableImageError as error:
        return str(error)
    return ""


def test_unreadable_image_names_the_file_even_from_a_worker(tree, monkeypatch):
    import torch.utils.data._utils as loader_utils
    import torch.utils.data._utils.worker as worker_utils

    # A worker that raised is joined with this timeout when the loader shuts down; keep the test fast.
    monkeypatch.setattr(loader_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    monkeypatch.setattr(worker_utils, "MP_STATUS_CHECK_INTERVAL", 0.2)
    (tree / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    dataset = AnomalyDataset([Sample("broken.png", 0, "x"), Sample("absent.png", 0, "x")], tree, SIZE)
    with pytest.raises(UnreadableImageError, match=r"broken\.png"):
        dataset[0]
    with pytest.raises(UnreadableImageError, match=r"not found: .*absent\.png"):
        dataset[1]
    assert "broken.png" in first_batch_error(DataLoader(dataset, batch_size=1, num_workers=1))
    gc.collect()  # shut the failed worker down while the short timeout is in place


def test_validate_lists_every_problem(tree):
    (tree / "broken.png").write_bytes(b"not an image")
    samples = [Sample("good.png", 0, "x"), Sample("absent.png", 0, "x"), Sample("bad.png", 1, "x", "gone.png"),
               Sample("broken.png", 0, "x"), Sample("good.png", 1, "x")]
    dataset = AnomalyDataset(samples, tree, SIZE)
    with pytest.raises(DatasetValidationError) as raised:
        dataset.validate(decode=True)
    message = str(raised.value)
    assert "4 problem" in message
    for name in ("absent.png", "gone.png", "broken.png", "no mask in the metadata"):
        assert name in message
    with pytest.raises(DatasetValidationError, match="3 problem"):
        dataset.validate(decode=False)
    AnomalyDataset(samples[:1], tree, SIZE).validate(decode=True)


def test_constructor_checks():
    with pytest.raises(ValueError, match="no samples"):
        AnomalyDataset([], ".")
    with pytest.raises(ValueError, match="mask_interpolation"):
        AnomalyDataset([Sample("a.png", 0, "x")], ".", mask_interpolation="bicubic")


def few_shot_pool():
    samples = []
    for name, normal, anomalous in (("a", 10, 6), ("b", 5, 9), ("c", 3, 3)):
        samples += [Sample(f"{name}/n{i}.png", 0, name) for i in range(normal)]
        samples += [Sample(f"{name}/d{i}.png", 1, name, f"{name}/m{i}.png") for i in range(anomalous)]
    return samples


def test_few_shot_counts_ratio_and_seed():
    pool = few_shot_pool()
    subset = few_shot_subset(pool, 6, seed=3)
    for name in "abc":
        members = [s for s in subset if s.class_name == name]
        assert [s.label for s in members].count(0) == 3 and [s.label for s in members].count(1) == 3
    assert subset == few_shot_subset(pool, 6, seed=3)
    assert subset != few_shot_subset(pool, 6, seed=4)
    assert [s for s in subset if s.class_name == "a"] == [
        s for s in few_shot_subset([s for s in pool if s.class_name == "a"], 6, seed=3)]
    assert [pool.index(s) for s in subset] == sorted(pool.index(s) for s in subset)


def test_few_shot_errors():
    pool = few_shot_pool()
    with pytest.raises(ValueError, match="even"):
        few_shot_subset(pool, 3)
    with pytest.raises(ValueError, match="'c' has 3 normal"):
        few_shot_subset(pool, 8)
    lenient = few_shot_subset(pool, 8, strict=False)
    assert len([s for s in lenient if s.class_name == "c"]) == 6


def test_augmentation_moves_mask_with_image():
    mask = torch.zeros(1, 32, 32)
    mask[0, 4:14, 6:26] = 1
    image = torch.randn(3, 32, 32)
    image[0] = mask[0] * 5.0
    augment = AAClipAugmentation(seed=0)
    changed = 0
    for index in range(20):
        out_image, out_mask = augment(image, mask, augment.generator(index))
        assert torch.equal(out_image[0], out_mask[0] * 5.0)
        assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
        changed += not torch.equal(out_mask, mask)
    assert changed >= 15


def test_seeded_augmentation_is_deterministic_per_epoch_and_index():
    image, mask = torch.randn(3, 16, 16), (torch.rand(1, 16, 16) > 0.5).float()
    augment = AAClipAugmentation(seed=7)
    first = augment(image, mask, augment.generator(3, epoch=0))
    assert all(torch.equal(a, b) for a, b in zip(first, augment(image, mask, augment.generator(3, epoch=0))))
    outputs = {augment(image, mask, augment.generator(3, epoch=e))[0].sum().item() for e in range(6)}
    assert len(outputs) > 1


def test_augmentation_reproduces_reference_random_stream(tree):
    """Same global seed -> the same jitter, rotation, translation and flips as the reference code."""
    colour = [transforms.RandomApply([transforms.ColorJitter(**{k: 0.5})], p=0.7)
              for k in ("brightness", "contrast", "saturation")]
    geometry = transforms.Compose([
        transforms.RandomApply([transforms.RandomRotation(degrees=math.degrees(math.pi / 6))], p=0.5),
        transforms.RandomApply([transforms.RandomAffine(degrees=0, translate=(0.15, 0.15))], p=0.5),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomVerticalFlip(p=0.5),
    ])
    sample = [Sample("bad.png", 1, "x", "bad_mask.png")]
    dataset = AnomalyDataset(sample, tree, SIZE, "nearest", augment=AAClipAugmentation(color_jitter=True))
    plain = AnomalyDataset(sample, tree, SIZE, "nearest")
    for seed in range(8):
        torch.manual_seed(seed)
        image = transforms.Compose(colour)(Image.open(tree / "bad.png").convert("RGB"))
        stacked = torch.cat([reference_image_pipeline(SIZE)(image), plain[0]["mask"]])
        expected = geometry(stacked)
        torch.manual_seed(seed)
        item = dataset[0]
        assert torch.equal(item["image"], expected[:3]) and torch.equal(item["mask"], expected[3:])


def test_dataset_applies_augmentation_with_its_epoch(tree):
    sample = [Sample("bad.png", 1, "x", "bad_mask.png")]
    augment = AAClipAugmentation(seed=1)
    dataset = AnomalyDataset(sample, tree, SIZE, augment=augment)
    plain = AnomalyDataset(sample, tree, SIZE)[0]
    dataset.set_epoch(2)
    image, mask = augment(plain["image"], plain["mask"], augment.generator(0, epoch=2))
    item = dataset[0]
    assert torch.equal(item["image"], image) and torch.equal(item["mask"], mask)
