"""APRIL-GAN (VAND) against a plain reference of the official test.py/train.py computation, the
official checkpoint format both ways, mosaics, a training step and the command line."""
from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from anomaly_clip import cli
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.fewshot import normal_references
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.mosaic import MosaicDataset
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.checkpoint import read_checkpoint, save_checkpoint
from anomaly_clip.engine.references import MemoryBank, predict_with_references
from anomaly_clip.methods import identify_checkpoint, load
from anomaly_clip.methods.components.prompts import VAND_PROMPTS, VAND_TEMPLATES
from anomaly_clip.data.pseudo_anomaly import PseudoAnomalies
from anomaly_clip.methods.vand import VANDConfig, VANDDetector, VANDTraining
from anomaly_clip.methods.vand.training import build_training_dataset, train

from conftest import TINY_FLAGS, tiny_config, train_config

LAYERS = (6, 12, 18, 24)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=3, n_test_normal=2,
                                      n_test_anomalous=3, image_size=64, seed=10)


@pytest.fixture()
def detector(tiny_backbone):
    torch.manual_seed(6)
    return VANDDetector(tiny_backbone, VANDConfig()).eval()


_TEXT = {}


def reference_text(clip, name):
    """prompt_ensemble.py: per state group, normalised sentence embeddings averaged and normalised."""
    if (id(clip), name) in _TEXT:
        return _TEXT[(id(clip), name)]
    rows = []
    for states in (VAND_PROMPTS.normal_states, VAND_PROMPTS.abnormal_states):
        sentences = [template.format(state.format(name)) for state in states for template in VAND_TEMPLATES]
        with torch.no_grad():
            embeddings = clip.encode_text(open_clip.tokenize(sentences))
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
        mean = embeddings.mean(dim=0)
        rows.append(mean / mean.norm())
    _TEXT[(id(clip), name)] = torch.stack(rows, dim=1)  # (E, 2), as the official code stacks them
    return _TEXT[(id(clip), name)]


def reference_tokens(clip, image, layers, positions=None):
    """The official encode_image: raw residual tokens after each listed block, and the pooled
    ln_post(CLS) @ proj embedding (``positions``: the position embedding, default CLIP's own)."""
    visual = clip.visual
    positions = visual.positional_embedding if positions is None else positions
    with torch.no_grad():
        x = visual.conv1(image[None]).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + positions
        x = visual.ln_pre(x)
        tokens = {}
        for index, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if index + 1 in layers:
                tokens[index + 1] = x
        pooled = visual.ln_post(x[:, 0]) @ visual.proj
    return pooled[0], tokens


def reference_zero_shot(clip, linear, image, name, size=56, positions=None):
    text = reference_text(clip, name)
    pooled, tokens = reference_tokens(clip, image, LAYERS, positions)
    pooled = pooled / pooled.norm()
    score = (100.0 * pooled @ text).softmax(dim=-1)[1]
    total = 0
    with torch.no_grad():
        for i, layer in enumerate(LAYERS):
            patch = linear.fc[i](tokens[layer][:, 1:, :])
            patch = patch / patch.norm(dim=-1, keepdim=True)
            anomaly_map = 100.0 * patch @ text
            side = int(np.sqrt(anomaly_map.shape[1]))
            anomaly_map = F.interpolate(anomaly_map.permute(0, 2, 1).view(1, 2, side, side), size=size,
                                        mode="bilinear", align_corners=True)
            total = total + torch.softmax(anomaly_map, dim=1)[:, 1]
    return score, total[0], tokens


def test_zero_shot_matches_official_computation(detector, tiny_backbone):
    torch.manual_seed(7)
    images = torch.randn(2, 3, 56, 56)
    names = ["metal_nut", "pcb1"]
    prediction = detector(images, names)
    for b, name in enumerate(names):
        score, anomaly_map, _ = reference_zero_shot(tiny_backbone.clip, detector.linear_layers, images[b], name)
        torch.testing.assert_close(prediction.scores[b], score, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(prediction.maps[b], anomaly_map, rtol=1e-4, atol=1e-5)
    assert float(prediction.maps.max()) <= len(LAYERS)


def test_few_shot_memory_and_class_scores_match_official(detector, tiny_backbone, synthetic_root):
    clip = tiny_backbone.clip
    chosen = normal_references(load_samples(synthetic_root, split="train"), 2, seed=0)
    bank = MemoryBank.build(detector, chosen, synthetic_root, batch_size=2)
    references = AnomalyDataset(chosen, synthetic_root, image_size=56)
    test = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    picks = [0, 1, 2, 3, 4]  # one class: fabric
    images = torch.stack([test[i]["image"] for i in picks])
    names = [test[i]["class_name"] for i in picks]
    assert set(names) == {"fabric"}
    fused = predict_with_references(detector, images, names, bank, 0.5)
    memory = {layer: [] for layer in LAYERS}
    for i in range(len(references)):
        if chosen[i].class_name == "fabric":
            _, tokens = reference_tokens(clip, references[i]["image"], LAYERS)
            for layer in LAYERS:
                memory[layer].append(tokens[layer][0, 1:])
    expected_maps, text_scores = [], []
    for b in range(len(picks)):
        score, zero_shot, tokens = reference_zero_shot(clip, detector.linear_layers, images[b], "fabric")
        few_shot = 0
        for layer in LAYERS:
            bank_rows = F.normalize(torch.cat(memory[layer]), dim=-1)
            cos = bank_rows @ F.normalize(tokens[layer][0, 1:], dim=-1).T  # pairwise.cosine_similarity(mem, p)
            distance = (1 - cos).min(dim=0).values.reshape(1, 1, 4, 4)
            few_shot = few_shot + F.interpolate(distance, size=56, mode="bilinear", align_corners=True)[0, 0]
        expected_maps.append(zero_shot + few_shot)
        text_scores.append(score)
    expected_maps, text_scores = torch.stack(expected_maps), torch.stack(text_scores)
    torch.testing.assert_close(fused.maps, expected_maps, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused.scores, text_scores, rtol=1e-4, atol=1e-5)
    peaks = expected_maps.flatten(1).max(dim=1).values
    expected = 0.5 * (text_scores + (peaks - peaks.min()) / (peaks.max() - peaks.min()))
    flat = fused.maps.flatten(1)
    ours = detector.class_image_scores(fused.scores, flat.amax(dim=1), flat.amin(dim=1))
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    detector.set_references(None)
    assert torch.equal(detector.class_image_scores(text_scores, peaks, peaks), text_scores)


def test_official_checkpoint_round_trip(detector, tiny_backbone, tmp_path):
    path = tmp_path / "mvtec_pretrained.pth"
    payload = detector.official_checkpoints()["official.pth"]
    assert set(payload) == {"trainable_linearlayer"}
    keys = sorted(f"fc.{i}.{kind}" for i in range(4) for kind in ("weight", "bias"))
    assert sorted(payload["trainable_linearlayer"]) == keys
    torch.save(payload, path)
    method, _, own = identify_checkpoint(path)
    assert method == "vand" and not own
    loaded = load(path, backbone=tiny_backbone)
    images = torch.randn(2, 3, 56, 56)
    expected, ours = detector(images, ["fabric"] * 2), loaded(images, ["fabric"] * 2)
    torch.testing.assert_close(ours.maps, expected.maps, rtol=0, atol=0)
    torch.testing.assert_close(ours.scores, expected.scores, rtol=0, atol=0)
    saved = save_checkpoint(tmp_path / "ours.pth", loaded)
    assert read_checkpoint(saved)["method"] == "vand"
    with pytest.raises(ValueError, match="holds 4 linear layers, this configuration has 2"):
        load(path, backbone=tiny_backbone, method_config={"features_list": (12, 24)})


@pytest.mark.parametrize("damage, message", [
    (lambda state: state.update({"fc.0.weight": "hello"}),
     r"hold values that are not tensors: fc.0.weight \(str\); it is damaged or not an APRIL-GAN file"),
    (lambda state: state.update({"fc.1.bias": [0.0, 1.0]}), r"not tensors: fc.1.bias \(list\)"),
    (lambda state: state.pop("fc.3.bias"), r"do not match the 4 of this configuration \(missing \['fc.3.bias'\]\)"),
    (lambda state: state.pop("fc.0.weight"), r"missing \['fc.0.weight'\]\): it is incomplete or damaged"),
])
def test_a_damaged_official_file_is_one_line_naming_the_keys(detector, tiny_backbone, synthetic_root, tmp_path, capsys,
                                                           damage, message):
    """A non-tensor value was an ``AttributeError`` traceback; a missing key read "holds 4 linear
    layers, this configuration has 4"."""
    state = dict(detector.official_checkpoints()["official.pth"]["trainable_linearlayer"])
    damage(state)
    path = tmp_path / "damaged.pth"
    torch.save({"trainable_linearlayer": state}, path)
    with pytest.raises(ValueError, match=message):
        load(path, backbone=tiny_backbone)
    with pytest.raises(SystemExit) as caught:
        cli.run("test", ["--method", "vand", "--checkpoint_path", str(path), "--data_path", synthetic_root,
                         "--save_path", str(tmp_path / "out"), *TINY_FLAGS])
    stderr = capsys.readouterr().err
    assert caught.value.code == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: ")


def test_mosaic_replaces_images_by_four_tiles_of_their_class(synthetic_root):
    samples = load_samples(synthetic_root, split="test")
    base = AnomalyDataset(samples, synthetic_root, image_size=56)
    mosaic = MosaicDataset(base, rate=1.0, seed=3)
    assert mosaic.varies_by_epoch and not MosaicDataset(base, rate=0.0).varies_by_epoch
    for index in (0, len(samples) - 1):
        tiles = mosaic.tiles(index)
        assert len(tiles) == 4 and {samples[t].class_name for t in tiles} == {samples[index].class_name}
        item = mosaic[index]
        assert item["mosaic"] and int(item["label"]) == samples[index].label
        for position, tile in enumerate(tiles):  # each quadrant of the mask is its tile's mask
            quadrant = item["mask"][0, (position // 2) * 28:(position // 2 + 1) * 28,
                                    (position % 2) * 28:(position % 2 + 1) * 28]
            if not samples[tile].is_anomalous:
                assert quadrant.sum() == 0
    assert mosaic.tiles(0) == MosaicDataset(base, rate=1.0, seed=3).tiles(0)
    mosaic.set_epoch(1)
    draws = {tuple(mosaic.tiles(i)) for i in range(len(samples))}
    mosaic.set_epoch(0)
    assert draws != {tuple(mosaic.tiles(i)) for i in range(len(samples))}
    untouched = MosaicDataset(base, rate=0.0)[2]
    torch.testing.assert_close(untouched["image"], base[2]["image"])
    with pytest.raises(ValueError, match="mosaic rate"):
        MosaicDataset(base, rate=1.5)
    with pytest.raises(ValueError, match="do not combine"):
        build_training_dataset(samples, synthetic_root, 56, aug_rate=0.2, pseudo_anomalies=PseudoAnomalies(0.5))
    assert isinstance(build_training_dataset(samples, synthetic_root, 56, aug_rate=0.2), MosaicDataset)


def test_training_step_changes_only_the_linear_layers(tiny_backbone, synthetic_root, tmp_path):
    torch.manual_seed(0)
    detector = VANDDetector(tiny_backbone, VANDConfig(features_list=(12, 24)))
    backbone_before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    layers_before = {k: v.clone() for k, v in detector.linear_layers.state_dict().items()}
    dataset = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    result = train(detector, dataset, train_config(tmp_path, VANDTraining(epoch=1, batch_size=10))).stages[""]
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert all(torch.equal(v, backbone_before[k]) for k, v in tiny_backbone.state_dict().items())
    assert all(not torch.equal(v, layers_before[k]) for k, v in detector.linear_layers.state_dict().items())
    assert (tmp_path / "epoch_1.pth").is_file()
    official = torch.load(tmp_path / "official_epoch_1.pth", weights_only=True)
    for key, value in detector.linear_layers.state_dict().items():
        torch.testing.assert_close(official["trainable_linearlayer"][key], value)


def test_loss_is_focal_plus_dice_of_the_abnormal_channel(detector, tiny_backbone):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 1, 56, 56)
    masks[1, :, 10:30, 20:40] = 1
    features = detector.training_features(images)
    ours = detector.segmentation_loss(features, torch.tensor([0, 1]), masks, ["fabric", "fabric"])["loss"]
    text = reference_text(tiny_backbone.clip, "fabric")
    expected = 0
    for i, layer in enumerate(LAYERS):
        patch = F.normalize(detector.linear_layers.fc[i](features[f"tokens_{layer}"]), dim=-1)
        logits = (100.0 * patch @ text).permute(0, 2, 1).reshape(2, 2, 4, 4)
        probabilities = torch.softmax(F.interpolate(logits, size=56, mode="bilinear", align_corners=True), dim=1)
        gt = masks[:, 0]
        one_hot = torch.stack([1 - gt, gt], dim=1).clamp(1e-5, 1 - 1e-5)
        pt = (one_hot * probabilities).sum(dim=1) + 1e-5
        focal = (-(1 - pt) ** 2 * pt.log()).mean()
        flat_p, flat_t = probabilities[:, 1].reshape(2, -1), gt.reshape(2, -1)
        dice = 1 - ((2 * (flat_p * flat_t).sum(1) + 1) / (flat_p.sum(1) + flat_t.sum(1) + 1)).sum() / 2
        expected = expected + focal + dice
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    ours.backward()
    assert all(p.grad is not None for p in detector.linear_layers.parameters())


def test_train_py_then_test_py_with_both_checkpoint_formats(synthetic_root, tmp_path):
    save = tmp_path / "ckpt"
    last = cli.train_main(["--method", "vand", "--train_data_path", synthetic_root, "--save_path", str(save),
                           "--epoch", "1", "--batch_size", "5", "--aug_rate", "0.5", "--features_list", "12", "24",
                           *TINY_FLAGS])
    assert last == save / "epoch_1.pth" and (save / "official_epoch_1.pth").is_file()
    assert "Mosaics: 50%" in (save / "log.txt").read_text()
    ours = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path",
                          str(tmp_path / "ours"), "--device", "cpu", "--num_workers", "0"])
    official = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(save / "official_epoch_1.pth"),
                              "--save_path", str(tmp_path / "official"), "--features_list", "12", "24", *TINY_FLAGS])
    assert ours["report"].mean() == official["report"].mean()
    few_shot = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path",
                              str(tmp_path / "few"), "--device", "cpu", "--num_workers", "0",
                              "--reference_images", "2"])
    assert few_shot["settings"]["references"]["images_per_class"] == {"fabric": 2, "washer": 2}
    assert json.loads((tmp_path / "few" / "results.json").read_text())["settings"]["method"] == "vand"


def test_few_shot_predict_without_a_calibration_says_its_image_score_is_zero_shot(detector, synthetic_root,
                                                                                tmp_path, capsys):
    """APRIL-GAN's few-shot image score normalises the map maxima over a class: ``predict`` scores
    images one by one, so without a calibration made with the references it gives the zero-shot
    text probability, and says so; with such a calibration the fused score, and no warning."""
    checkpoint = save_checkpoint(tmp_path / "vand.pth", detector)
    references = f"{synthetic_root}/fabric/train/good"
    common = ["--checkpoint_path", str(checkpoint), "--input", f"{synthetic_root}/fabric/test", "--class_name",
              "fabric", "--device", "cpu", "--num_workers", "0"]
    zero_shot = cli.predict_main([*common, "--save_path", str(tmp_path / "zero")])
    capsys.readouterr()
    few = cli.predict_main([*common, "--reference_images", references, "--save_path", str(tmp_path / "few")])
    warned = [line for line in capsys.readouterr().out.splitlines() if "few-shot image score needs" in line]
    assert len(warned) == 1 and "the image score is the zero-shot text probability" in warned[0]
    assert [row.score for row in few] == [row.score for row in zero_shot]
    calibration = tmp_path / "fused.json"
    cli.calibrate_main(["--checkpoint_path", str(checkpoint), "--data_path", synthetic_root, "--class_name", "fabric",
                        "--reference_images", references, "--output", str(calibration), "--device", "cpu",
                        "--num_workers", "0"])
    capsys.readouterr()
    fused = cli.predict_main([*common, "--reference_images", references, "--calibration", str(calibration),
                              "--save_path", str(tmp_path / "fused")])
    assert "few-shot image score needs" not in capsys.readouterr().out
    assert [row.score for row in fused] != [row.score for row in zero_shot]


def test_reference_weight_help_describes_vand():
    """The flag's help is true for every method: VAND's image score does not follow W."""
    from anomaly_clip.cli.settings import ReferenceSettings

    help_text = ReferenceSettings.__dataclass_fields__["reference_weight"].metadata["help"]
    assert "VAND" in help_text and "whatever W" in help_text


def test_default_backbone_is_the_official_one():
    config = VANDDetector.default_backbone_config()
    assert (config.model_name, config.activation, config.image_size, config.pos_embed_interpolation) == \
        ("ViT-L-14-336", "gelu", 518, "bicubic_antialias")
    with pytest.raises(ValueError, match="exceed the 24 visual blocks"):
        from anomaly_clip.clip.backbone import load_backbone
        VANDDetector(load_backbone(tiny_config(), device="cpu"), VANDConfig(features_list=(12, 30)))


def test_position_grid_is_resized_bicubic_with_antialias_as_the_official_code():
    """VAND's default backbone, at a size whose grid differs from the native one (4 -> 8 patches
    here, 24 -> 37 for ViT-L/14-336 at 518 px), resizes the position grid with
    ``F.interpolate(mode="bicubic", antialias=True)``, and the whole zero-shot computation with that
    embedding matches the official one."""
    from dataclasses import replace

    from anomaly_clip import create_detector

    config = replace(VANDDetector.default_backbone_config(), model_name="anomaly-clip-tiny", pretrained=None,
                     random_init=True, image_size=112)
    torch.manual_seed(6)
    detector = create_detector("vand", backbone=config, device="cpu")
    clip = detector.backbone.clip
    native = clip.visual.positional_embedding.detach()
    grid = native[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False, antialias=True)
    expected = torch.cat([native[:1], resized.permute(0, 2, 3, 1).reshape(64, -1)])
    plain = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
    assert not torch.allclose(resized, plain, atol=1e-4)  # the two kernels differ even when upsampling
    torch.testing.assert_close(detector.backbone.resized_position_embedding, expected, rtol=0, atol=0)
    images = torch.randn(1, 3, 112, 112)
    prediction = detector(images, ["fabric"])
    score, anomaly_map, _ = reference_zero_shot(clip, detector.linear_layers, images[0], "fabric", size=112,
                                                positions=expected)
    torch.testing.assert_close(prediction.scores[0], score, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(prediction.maps[0], anomaly_map, rtol=1e-4, atol=1e-5)
