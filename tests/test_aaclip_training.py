"""AA-CLIP two-stage training: what each stage trains, checkpoints in both formats, resume."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from anomaly_clip import fit
from anomaly_clip.methods.aaclip.config import AAClipTraining
from anomaly_clip.methods.aaclip.training import train_image_stage, train_text_stage
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.methods import load
from anomaly_clip.engine.checkpoint import read_checkpoint
from anomaly_clip.methods.aaclip import AAClipConfig, AAClipDetector

from conftest import train_config

SIZE = 56


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone(model_name="anomaly-clip-tiny", random_init=True, image_size=SIZE, activation="gelu",
                         pos_embed_interpolation="bicubic_antialias", device="cpu")


class TensorSamples(Dataset):
    """Loader-format items from fixed random tensors: odd items anomalous with a square mask."""

    def __init__(self, count: int = 6):
        generator = torch.Generator().manual_seed(7)
        self.images = torch.randn(count, 3, SIZE, SIZE, generator=generator)
        self.masks = torch.zeros(count, 1, SIZE, SIZE)
        for i in range(1, count, 2):
            self.masks[i, :, 8 + i:28 + i, 10:30] = 1
            self.images[i, :, 8 + i:28 + i, 10:30] += 2.0
        self.names = ["bottle", "screw"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return {"image": self.images[index], "mask": self.masks[index], "label": torch.tensor(index % 2),
                "class_name": self.names[(index // 2) % 2], "path": f"image_{index}.png", "index": index}


def fresh_detector(backbone, **config):
    torch.manual_seed(5)
    return AAClipDetector(backbone, AAClipConfig(dataset="MVTec", **config))


def settings(**changes):
    values = dict(text_epoch=2, image_epoch=2, text_batch_size=4, image_batch_size=2, text_lr=1e-3,
                  image_lr=1e-3)
    values.update(changes)
    return AAClipTraining(**values)


def run(path, **run_settings):
    return train_config(path, seed=3, **run_settings)


def test_each_stage_trains_only_its_adapter(backbone, tmp_path):
    detector = fresh_detector(backbone)
    start = {k: v.clone() for k, v in detector.trainable_state_dict().items()}
    train_text_stage(detector, TensorSamples(), run(tmp_path, export_official=False), settings())
    after_text = detector.trainable_state_dict()
    assert all(not torch.equal(after_text[k], start[k]) for k in start if k.startswith("text_adapter."))
    assert all(torch.equal(after_text[k], start[k]) for k in start if k.startswith("image_adapter."))
    anchors = detector.anchors_for(["bottle"], 1).clone()
    after_text = {k: v.clone() for k, v in after_text.items()}
    train_image_stage(detector, TensorSamples(), run(tmp_path, export_official=False), settings())
    after_image = detector.trainable_state_dict()
    assert all(torch.equal(after_image[k], after_text[k]) for k in start if k.startswith("text_adapter."))
    assert all(not torch.equal(after_image[k], after_text[k]) for k in start if k.startswith("image_adapter."))
    torch.testing.assert_close(detector.anchors_for(["bottle"], 1), anchors)


def test_two_stage_training_writes_both_formats_and_resumes(backbone, tmp_path):
    data = TensorSamples()
    straight = fresh_detector(backbone)
    last = fit(straight, data, run(tmp_path / "straight", method=settings(text_epoch=2, image_epoch=3))).final_checkpoint
    assert last.name == "image_epoch_3.pth"
    names = {p.name for p in (tmp_path / "straight").iterdir()}
    assert {"text_epoch_1.pth", "text_epoch_2.pth", "text_last.pth", "image_epoch_3.pth", "image_last.pth",
            "text_adapter.pth", "image_adapter.pth", "image_adapter_1.pth", "image_adapter_3.pth"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    checkpoint = read_checkpoint(last)
    assert checkpoint["method"] == "aaclip" and checkpoint["stage"] == "image" and checkpoint["epoch"] == 3
    assert torch.load(tmp_path / "straight" / "text_adapter.pth", weights_only=True)["epoch"] == 2

    interrupted = fresh_detector(backbone)
    fit(interrupted, data, run(tmp_path / "resumed", method=settings(text_epoch=2, image_epoch=1)))
    resumed = fresh_detector(backbone)
    fit(resumed, data, run(tmp_path / "resumed", method=settings(text_epoch=2, image_epoch=3), resume=True))
    for key, value in straight.trainable_state_dict().items():
        torch.testing.assert_close(resumed.trainable_state_dict()[key], value, msg=key)

    images = data.images[:2]
    expected = straight.eval()(images, ["bottle", "screw"])
    for source in (last, tmp_path / "straight"):
        loaded = load(source, backbone=backbone, method_config={"dataset": "MVTec"})
        got = loaded(images, ["bottle", "screw"])
        torch.testing.assert_close(got.scores, expected.scores)
        torch.testing.assert_close(got.maps, expected.maps)


def test_skipping_the_text_stage_uses_plain_clip_anchors(backbone, tmp_path):
    detector = fresh_detector(backbone)
    fit(detector, TensorSamples(), run(tmp_path, method=settings(text_epoch=0, image_epoch=1)))
    assert not detector.config.adapt_text
    assert not (tmp_path / "text_adapter.pth").exists() and (tmp_path / "image_adapter_1.pth").exists()
    assert not load(tmp_path, backbone=backbone).config.adapt_text


def test_training_lowers_the_losses(backbone, tmp_path):
    detector = fresh_detector(backbone)
    text = train_text_stage(detector, TensorSamples(), run(tmp_path, export_official=False),
                            settings(text_epoch=4, text_lr=3e-3, disentangle_weight=5.0)).history
    image = train_image_stage(detector, TensorSamples(), run(tmp_path, export_official=False),
                              settings(image_epoch=4, image_lr=3e-3)).history
    assert text[-1]["loss"] < text[0]["loss"] and text[-1]["disentangle"] < text[0]["disentangle"]
    assert image[-1]["loss"] < image[0]["loss"]


def test_settings_validation():
    with pytest.raises(ValueError):
        AAClipTraining(vv_axis="channels")
    with pytest.raises(ValueError):
        AAClipTraining(image_epoch=0)
