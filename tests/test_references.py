"""Few-shot normal references: memory bank, nearest-neighbour distances, fusion, bounded memory,
and test.py --reference_images end to end."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from anomaly_clip import cli
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.fewshot import folder_references, normal_references
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.engine.evaluation import evaluate
from anomaly_clip.engine.references import (
    DEFAULT_MAX_ELEMENTS,
    MemoryBank,
    fuse_with_references,
    nearest_distances,
    predict_with_references,
    similarity_block,
)
from anomaly_clip.methods.aaclip import AAClipConfig, AAClipDetector
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.methods.anomalyclip_adapters import PromptAdapterConfig, PromptAdapterDetector

from conftest import tiny_config


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=3, n_test_normal=2,
                                      n_test_anomalous=2, image_size=64, seed=6)


@pytest.fixture(scope="module")
def anomalyclip(tiny_backbone) -> AnomalyCLIP:
    torch.manual_seed(3)
    return AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2, features_list=(12, 24))).eval()


@pytest.fixture(scope="module")
def aaclip(tiny_backbone) -> AAClipDetector:
    torch.manual_seed(4)
    return AAClipDetector(tiny_backbone, AAClipConfig(features_list=(12, 24), dataset="synthetic")).eval()


@pytest.fixture(scope="module")
def hybrid(tiny_backbone) -> PromptAdapterDetector:
    torch.manual_seed(5)
    config = PromptAdapterConfig(features_list=(12, 24), n_ctx=4, depth=3, t_n_ctx=2)
    return PromptAdapterDetector(tiny_backbone, config).eval()


def references(root: str, k: int = 2):
    return normal_references(load_samples(root, split="train"), k, seed=0)


def test_similarity_blocks_stay_bounded():
    # A 64-shot bank at 518 px with ViT-L/14: 1369 patches per image, batches of 8 test images.
    queries, bank = 8 * 1369, 64 * 1369
    rows, bank_rows = similarity_block(queries, bank)
    assert rows * bank_rows <= DEFAULT_MAX_ELEMENTS and rows == queries
    assert rows * bank_rows * 4 <= 64 * 2 ** 20  # one float32 block of at most 64 MiB, not 3.8 GiB
    for q, m, limit in [(10, 10, 1), (1000, 5, 64), (3, 10 ** 6, 100), (10 ** 5, 10 ** 5, 10 ** 4), (7, 7, 10 ** 9)]:
        rows, bank_rows = similarity_block(q, m, limit)
        assert 1 <= rows <= q and 1 <= bank_rows <= m and rows * bank_rows <= max(limit, 1)
    with pytest.raises(ValueError):
        similarity_block(0, 4)


def test_blockwise_distances_equal_the_full_computation():
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(37, 16), dim=-1)
    bank = F.normalize(torch.randn(53, 16), dim=-1)
    expected = 1 - (queries @ bank.T).max(dim=1).values
    for limit in (1, 7, 100, 10 ** 6):
        torch.testing.assert_close(nearest_distances(queries, bank, limit), expected.clamp(0, 2), rtol=0, atol=1e-6)
    assert nearest_distances(bank[:5], bank).abs().max() < 1e-6


def test_reference_image_scores_zero_at_every_patch(anomalyclip, aaclip, hybrid, synthetic_root):
    chosen = references(synthetic_root)
    dataset = AnomalyDataset(chosen, synthetic_root, image_size=56)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    names = [s.class_name for s in chosen]
    for detector in (anomalyclip, aaclip, hybrid):
        bank = MemoryBank.build(detector, chosen, synthetic_root, batch_size=3)
        prediction, patches = detector.forward_with_patch_features(images, names)
        distances = bank.distances(patches, names)
        assert distances.shape == (4, 2, 16)
        assert distances.abs().max() < 1e-5
        maps = bank.anomaly_maps(detector, patches, names, 56)
        assert maps.shape == (4, 56, 56) and maps.abs().max() < 1e-4
        fused = fuse_with_references(prediction, maps, 1.0)
        assert fused.scores.abs().max() < 1e-4
        other = [("washer" if n == "fabric" else "fabric") for n in names]
        assert bank.distances(patches, other).min() > 1e-4


def reference_distances(bank_features: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Nearest-neighbour cosine distance patch by patch, written out plainly."""
    result = np.empty(len(queries))
    for i, query in enumerate(queries):
        similarities = [float(np.dot(query, row) / np.linalg.norm(query) / np.linalg.norm(row)) for row in bank_features]
        result[i] = 1 - max(similarities)
    return result


def test_two_shot_bank_changes_maps_as_documented(anomalyclip, aaclip, synthetic_root):
    chosen = references(synthetic_root)
    test = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    picks = [0, 3, 5, 7]
    images = torch.stack([test[i]["image"] for i in picks])
    names = [test[i]["class_name"] for i in picks]
    weight = 0.3
    for detector in (anomalyclip, aaclip):
        bank = MemoryBank.build(detector, chosen, synthetic_root, batch_size=2)
        fused = predict_with_references(detector, images, names, bank, weight)
        text = detector(images, names)
        patches = detector.patch_features(images)
        expected_maps = []
        for b, name in enumerate(names):
            own = [i for i, s in enumerate(chosen) if s.class_name == name]
            reference_images = torch.stack([AnomalyDataset(chosen, synthetic_root, image_size=56)[i]["image"] for i in own])
            reference_patches = detector.patch_features(reference_images)
            grids = []
            for layer in sorted(patches):
                bank_rows = reference_patches[layer].reshape(-1, reference_patches[layer].shape[-1]).numpy()
                grids.append(reference_distances(bank_rows, patches[layer][b].numpy()).reshape(4, 4))
            grids = torch.tensor(np.stack(grids), dtype=torch.float32)
            if isinstance(detector, AnomalyCLIP):
                upsampled = F.interpolate(grids[None], size=(56, 56), mode="bilinear", align_corners=False)[0]
                smooth = scipy.ndimage.gaussian_filter(upsampled.sum(0).double().numpy(), sigma=4.0)
            else:
                blurred = TF.gaussian_blur(grids[:, None], kernel_size=[7, 7], sigma=[1.0, 1.0])
                upsampled = F.interpolate(blurred, size=(56, 56), mode="bilinear", align_corners=True)
                smooth = upsampled.sum(dim=(0, 1)).double().numpy()
            expected_maps.append(smooth)
        expected_maps = torch.tensor(np.stack(expected_maps), dtype=torch.float32)
        torch.testing.assert_close(fused.maps, (1 - weight) * text.maps + weight * expected_maps, rtol=1e-4, atol=1e-4)
        expected_scores = (1 - weight) * text.scores + weight * expected_maps.flatten(1).max(dim=1).values
        torch.testing.assert_close(fused.scores, expected_scores, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(fused.maps, text.maps)
        unchanged = predict_with_references(detector, images, names, bank, 0.0)
        torch.testing.assert_close(unchanged.maps, text.maps, rtol=0, atol=0)


def test_evaluation_uses_one_backbone_pass_and_never_rebuilds_the_bank(anomalyclip, synthetic_root, monkeypatch):
    bank = MemoryBank.build(anomalyclip, references(synthetic_root), synthetic_root)
    frozen = {name: {layer: t.clone() for layer, t in layers.items()} for name, layers in bank.features.items()}
    calls = {"patch_features": 0, "forward_with_patch_features": 0, "forward": 0}
    for name in calls:
        original = getattr(anomalyclip, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(anomalyclip, name, spy)
    test = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    report = evaluate(anomalyclip, test, batch_size=4, num_workers=0, progress=False, references=bank)
    assert calls == {"patch_features": 0, "forward_with_patch_features": 2, "forward": 0}
    assert [row.name for row in report.rows] == ["fabric", "washer"]
    for name, layers in frozen.items():
        for layer, value in layers.items():
            assert torch.equal(bank.features[name][layer], value)


def test_bank_memory_at_518_with_a_64_shot_bank(synthetic_root, monkeypatch):
    """Real 518 px patch grids (1369 patches) from a tiny-width model; the 64-shot bank is the
    two references' features repeated with noise (computing 64 images at 518 would only cost time)."""
    torch.manual_seed(0)
    backbone = load_backbone(tiny_config(image_size=518), device="cpu")
    detector = AnomalyCLIP(backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2, features_list=(24,))).eval()
    chosen = [s for s in references(synthetic_root) if s.class_name == "washer"][:1]
    small = MemoryBank.build(detector, chosen, synthetic_root)
    assert small.patches_per_image == 1369
    rows = small.features["washer"][24]
    noisy = F.normalize(rows.repeat(64, 1) + 0.05 * torch.randn(64 * rows.shape[0], rows.shape[1]), dim=-1)
    bank = MemoryBank({"washer": {24: noisy}}, small.sources, small.identity, max_elements=2 ** 20,
                      patches_per_image=1369)
    blocks = []
    matmul = torch.Tensor.__matmul__

    def recording(self, other):
        blocks.append(self.shape[0] * other.shape[-1])
        return matmul(self, other)

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording)
    queries = {24: F.normalize(torch.randn(2, 1369, rows.shape[1]), dim=-1)}
    distances = bank.distances(queries, ["washer", "washer"])
    monkeypatch.undo()
    assert len(blocks) > 1 and max(blocks) <= 2 ** 20 < 2 * 1369 * 64 * 1369
    expected = 1 - (queries[24][0, :50] @ noisy.T).max(dim=1).values
    torch.testing.assert_close(distances[0, 0, :50], expected, rtol=0, atol=1e-5)


def test_references_from_folders_and_their_errors(synthetic_root, tmp_path):
    by_class = folder_references(Path(synthetic_root) / "washer" / "train")
    assert {s.class_name for s in by_class} == {"good"} and all(Path(s.image_path).is_absolute() for s in by_class)
    flat = folder_references(Path(synthetic_root) / "washer" / "train" / "good", "washer")
    assert len(flat) == 3 and {s.class_name for s in flat} == {"washer"}
    with pytest.raises(ValueError, match="--class_name"):
        folder_references(Path(synthetic_root) / "washer" / "train" / "good")
    with pytest.raises(ValueError, match="no images"):
        folder_references(tmp_path)
    with pytest.raises(ValueError, match=r"4 normal references per class requested, but some classes have fewer "
                                         r"normal images \('fabric' 3, 'washer' 3\): ask for K <= 3"):
        normal_references(load_samples(synthetic_root, split="train"), 4)


def test_test_py_with_two_references_and_a_saved_bank(anomalyclip, aaclip, synthetic_root, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.pth", anomalyclip)
    common = ["--data_path", synthetic_root, "--checkpoint_path", str(checkpoint), "--device", "cpu",
              "--num_workers", "0", "--batch_size", "4"]
    bank_file = tmp_path / "bank.pt"
    built = cli.test_main([*common, "--save_path", str(tmp_path / "built"), "--reference_images", "2",
                           "--reference_weight", "0.4", "--save_reference_bank", str(bank_file)])
    assert built["settings"]["references"] == {"source": "2", "weight": 0.4,
                                               "images_per_class": {"fabric": 2, "washer": 2}}
    loaded = cli.test_main([*common, "--save_path", str(tmp_path / "loaded"), "--reference_images", str(bank_file),
                            "--reference_weight", "0.4"])
    assert loaded["report"].to_markdown() == built["report"].to_markdown()
    plain = cli.test_main([*common, "--save_path", str(tmp_path / "plain")])
    assert plain["report"].to_markdown() != built["report"].to_markdown()
    saved = json.loads((tmp_path / "built" / "results.json").read_text())
    assert saved["settings"]["references"]["weight"] == 0.4
    other = save_checkpoint(tmp_path / "aaclip.pth", aaclip)
    with pytest.raises(ValueError, match="another"):
        cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(other), "--device", "cpu",
                       "--num_workers", "0", "--save_path", str(tmp_path / "x"), "--reference_images", str(bank_file)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cli.test_main([*common, "--save_path", str(tmp_path / "y"), "--reference_images", "2",
                       "--reference_weight", "2"])


def test_k_references_without_the_split_name_the_flag_and_the_folder_form(anomalyclip, synthetic_root, tmp_path,
                                                                           capsys):
    """Issue 19: a dataset with a test split only; K references default to the train split."""
    root = tmp_path / "test_only"
    shutil.copytree(synthetic_root, root)
    content = json.loads((root / "meta.json").read_text())
    (root / "meta.json").write_text(json.dumps({"test": content["test"]}))
    checkpoint = save_checkpoint(tmp_path / "model.pth", anomalyclip)
    with pytest.raises(SystemExit) as caught:
        cli.run("test", ["--data_path", str(root), "--checkpoint_path", str(checkpoint), "--save_path",
                         str(tmp_path / "out"), "--reference_images", "2", "--device", "cpu", "--num_workers", "0"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2 and len(errors) == 1
    assert "'train' split" in errors[0] and "--reference_split" in errors[0] and "--reference_images DIR" in errors[0]
    assert "has no split 'train'" in errors[0]


def test_references_drawn_from_the_evaluated_images_are_left_out(anomalyclip, synthetic_root, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "model.pth", anomalyclip)
    result = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(checkpoint), "--save_path",
                            str(tmp_path), "--reference_images", "1", "--reference_split", "test", "--device", "cpu",
                            "--num_workers", "0"])
    images = {row.name: row.num_images for row in result["report"].rows}
    assert images == {"fabric": 3, "washer": 3}          # 4 test images per class, 1 of them a reference
    log = (tmp_path / "test_log.txt").read_text()
    assert "2 of the evaluated images are normal references" in log and "left out of the evaluation" in log
    plain = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(checkpoint), "--save_path",
                           str(tmp_path / "train_refs"), "--reference_images", "1", "--device", "cpu",
                           "--num_workers", "0"])
    assert {row.name: row.num_images for row in plain["report"].rows} == {"fabric": 4, "washer": 4}
    assert "left out of the evaluation" not in (tmp_path / "train_refs" / "test_log.txt").read_text()


def test_evaluating_a_model_on_its_training_images_is_warned_about(synthetic_root, tmp_path):
    run = ["--device", "cpu", "--num_workers", "0"]
    checkpoint = cli.train_main(["--tiny", "--image_size", "56", "--train_data_path", synthetic_root, "--save_path",
                                 str(tmp_path / "run"), "--epoch", "1", "--features_list", "24", *run])
    cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(checkpoint), "--save_path",
                   str(tmp_path / "same"), *run])
    assert "was trained on the very images evaluated here" in (tmp_path / "same" / "test_log.txt").read_text()
    cli.test_main(["--data_path", synthetic_root, "--split", "train", "--checkpoint_path", str(checkpoint),
                   "--save_path", str(tmp_path / "other"), "--metrics", "image-level", *run])
    assert "trained on the very images" not in (tmp_path / "other" / "test_log.txt").read_text()
