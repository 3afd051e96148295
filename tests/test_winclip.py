"""WinCLIP / WinCLIP+ against a direct reference: each window built and run one at a time through
open_clip's own modules, harmonic aggregation patch by patch, association scores by brute force."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

from anomaly_clip import cli
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.fewshot import normal_references
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.references import MemoryBank, predict_with_references
from anomaly_clip.methods.components.prompts import WINCLIP_PROMPTS, WINCLIP_TEMPLATES
from anomaly_clip.methods.winclip import WinCLIPConfig, WinCLIPDetector
from anomaly_clip.methods.winclip.windows import (coverage, harmonic_aggregation, harmonic_mean, window_embeddings,
                                                  window_indices)

from conftest import TINY_FLAGS



@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=3, n_test_normal=2,
                                      n_test_anomalous=2, image_size=64, seed=9)


@pytest.fixture(scope="module")
def detector(tiny_backbone):
    return WinCLIPDetector(tiny_backbone, WinCLIPConfig()).eval()


def loop_windows(rows, columns, scale):
    """Windows of a grid, one by one: top-left corners row by row, patches row by row."""
    return [[(top + i) * columns + left + j for i in range(scale) for j in range(scale)]
            for top in range(rows - scale + 1) for left in range(columns - scale + 1)]


def test_window_indices_follow_anomalib_order():
    for grid, scale in (((4, 4), 2), ((4, 4), 3), ((15, 15), 2), ((5, 7), 3)):
        assert window_indices(grid, scale).tolist() == loop_windows(*grid, scale)
    assert window_indices((3, 3), 2, stride=2).tolist() == [[0, 1, 3, 4]]
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((2, 2), 3)


def reference_harmonic(window_scores, windows, patches):
    """Patch by patch: number of covering windows / sum of their reciprocal scores."""
    result = torch.zeros(window_scores.shape[0], patches)
    for b in range(window_scores.shape[0]):
        for patch in range(patches):
            covering = [w for w, members in enumerate(windows) if patch in members]
            if covering:
                total = sum(1 / float(window_scores[b, w]) if float(window_scores[b, w]) else float("inf")
                            for w in covering)
                result[b, patch] = len(covering) / total
    return result


def test_harmonic_aggregation_matches_patch_by_patch_loop():
    torch.manual_seed(0)
    windows = loop_windows(5, 5, 2)
    scores = torch.rand(2, len(windows)) + 0.05
    scores[1, 3] = 0.0  # a zero score makes every patch it covers 0, and only those
    indices = torch.tensor(windows)
    ours = harmonic_aggregation(scores, coverage(indices, 25))
    torch.testing.assert_close(ours, reference_harmonic(scores, windows, 25), rtol=1e-5, atol=1e-6)
    assert int((ours[1] == 0).sum()) == 4 and torch.isfinite(ours).all()
    strided = torch.tensor(loop_windows(5, 5, 2)[::2])  # leaves patches uncovered: they get 0, not NaN
    assert torch.isfinite(harmonic_aggregation(torch.rand(1, len(strided)), coverage(strided, 25))).all()
    torch.testing.assert_close(harmonic_mean([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])]),
                               torch.tensor([1.5, 0.0]))


def reference_embeddings(clip, image, scales):
    """open_clip's modules, one window at a time: class token + the window's patch tokens (after
    position embedding), ln_pre, the transformer, ln_post of the class token, proj."""
    visual = clip.visual
    with torch.no_grad():
        x = visual.conv1(image[None]).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(1, 1, -1), x], dim=1) + visual.positional_embedding
        full = visual.transformer(visual.ln_pre(x))
        image_embedding = visual.ln_post(full[:, 0]) @ visual.proj
        patches = visual.ln_post(full[0, 1:])
        side = int((x.shape[1] - 1) ** 0.5)
        windows = {}
        for scale in scales:
            rows = []
            for members in loop_windows(side, side, scale):
                sequence = torch.cat([x[:, :1], x[:, [1 + m for m in members]]], dim=1)
                out = visual.transformer(visual.ln_pre(sequence))
                rows.append((visual.ln_post(out[:, 0]) @ visual.proj)[0])
            windows[scale] = torch.stack(rows)
    return image_embedding[0], patches, windows, side


_TEXT = {}


def reference_text(clip, name):
    """anomalib: the mean of the raw (unnormalised) embeddings of each state group's sentences."""
    if (id(clip), name) in _TEXT:
        return _TEXT[(id(clip), name)]
    rows = []
    for states in (WINCLIP_PROMPTS.normal_states, WINCLIP_PROMPTS.abnormal_states):
        sentences = [template.format(state.format(name)) for state in states for template in WINCLIP_TEMPLATES]
        with torch.no_grad():
            rows.append(clip.encode_text(open_clip.tokenize(sentences)).mean(dim=0))
    _TEXT[(id(clip), name)] = torch.stack(rows), len(sentences)
    return _TEXT[(id(clip), name)]


def probability(embedding, text):
    cos = F.normalize(embedding, dim=-1) @ F.normalize(text, dim=-1).T
    return torch.softmax(cos / 0.07, dim=-1)[..., 1]


def reference_zero_shot(clip, image, text, scales):
    image_embedding, patches, windows, side = reference_embeddings(clip, image, scales)
    score = probability(image_embedding, text)
    maps = [torch.full((side * side,), float(score))]
    for scale in scales:
        maps.append(reference_harmonic(probability(windows[scale], text)[None], loop_windows(side, side, scale),
                                       side * side)[0])
    grid = len(maps) / sum(1 / m for m in maps)
    return score, grid, (patches, windows, side)


def upsample(grid, side, size):
    return F.interpolate(grid.reshape(1, 1, side, side), size=(size, size), mode="bilinear", align_corners=False)[0, 0]


def test_zero_shot_matches_one_window_at_a_time_reference(detector, tiny_backbone):
    clip = tiny_backbone.clip
    torch.manual_seed(4)
    images = torch.randn(2, 3, 56, 56)
    prediction = detector(images, ["metal_nut", "fabric"])
    for b, name in enumerate(["metal_nut", "fabric"]):
        text, count = reference_text(clip, name)
        assert count == 4 * 21
        score, grid, (_, _, side) = reference_zero_shot(clip, images[b], text, (2, 3))
        torch.testing.assert_close(prediction.scores[b], score, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(prediction.maps[b], upsample(grid, side, 56), rtol=1e-4, atol=1e-5)


def test_batched_windows_equal_single_window_chunks(detector, tiny_backbone):
    images = torch.randn(3, 3, 56, 56)
    tokens = tiny_backbone.embed_image(images)
    indices = window_indices(detector.grid, 3)
    with torch.no_grad():
        batched = window_embeddings(tiny_backbone, tokens, indices, max_tokens=1 << 16)
        one_by_one = window_embeddings(tiny_backbone, tokens, indices, max_tokens=1)
        uneven = window_embeddings(tiny_backbone, tokens, indices, max_tokens=25)  # chunks of 2 windows
    assert batched.shape == (3, 4, tiny_backbone.embed_dim)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched, uneven, rtol=1e-5, atol=1e-6)


def test_windows_do_not_attend_across_each_other(detector, tiny_backbone):
    """Changing the patches outside a window leaves that window's embedding unchanged."""
    images = torch.randn(1, 3, 56, 56)
    changed = images.clone()
    changed[..., 28:, :] = torch.randn_like(changed[..., 28:, :])  # bottom half of the 4 x 4 grid
    first = detector.encode(images)["windows_2"][0, 0]  # window on patches 0, 1, 4, 5 (top rows)
    second = detector.encode(changed)["windows_2"][0, 0]
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)


def test_few_shot_matches_brute_force_reference(detector, tiny_backbone, synthetic_root):
    clip = tiny_backbone.clip
    chosen = normal_references(load_samples(synthetic_root, split="train"), 2, seed=0)
    bank = MemoryBank.build(detector, chosen, synthetic_root, batch_size=3)
    assert sorted(bank.layers) == [0, 2, 3]
    data = AnomalyDataset(chosen, synthetic_root, image_size=56)
    test = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    images = torch.stack([test[i]["image"] for i in (0, 2, 5)])
    names = [test[i]["class_name"] for i in (0, 2, 5)]
    prediction = predict_with_references(detector, images, names, bank, 0.5)
    for b, name in enumerate(names):
        references = [reference_embeddings(clip, data[i]["image"], (2, 3)) for i in range(len(data))
                      if chosen[i].class_name == name]
        text, _ = reference_text(clip, name)
        score, zero_shot, (patches, windows, side) = reference_zero_shot(clip, images[b], text, (2, 3))

        def association(queries, rows):
            cos = F.normalize(queries, dim=-1) @ F.normalize(rows, dim=-1).T
            return ((1 - cos) / 2).min(dim=1).values

        maps = [association(patches, torch.cat([r[1] for r in references]))]
        for scale in (2, 3):
            scores = association(windows[scale], torch.cat([r[2][scale] for r in references]))
            maps.append(reference_harmonic(scores[None], loop_windows(side, side, scale), side * side)[0])
        few_shot = torch.stack(maps).mean(dim=0)
        torch.testing.assert_close(prediction.maps[b], upsample((zero_shot + few_shot) / 2, side, 56),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(prediction.scores[b], (score + few_shot.max()) / 2, rtol=1e-4, atol=1e-5)
    detector.set_references(None)
    plain = detector(images, names)
    assert not torch.allclose(plain.maps, prediction.maps)


def test_a_reference_image_scores_zero_few_shot(detector, synthetic_root):
    chosen = normal_references(load_samples(synthetic_root, split="train"), 1, seed=1)
    bank = MemoryBank.build(detector, chosen, synthetic_root)
    images = torch.stack([AnomalyDataset(chosen, synthetic_root, image_size=56)[i]["image"] for i in range(2)])
    names = [s.class_name for s in chosen]
    fused = predict_with_references(detector, images, names, bank, 1.0)
    assert fused.maps.abs().max() < 1e-5 and fused.scores.abs().max() < 1e-5
    with pytest.raises(ValueError, match="no reference images for classes"):
        detector(images, ["tile", "tile"])
    detector.set_references(None)


def test_bad_settings_are_refused(tiny_backbone):
    with pytest.raises(ValueError, match="does not fit"):
        WinCLIPDetector(tiny_backbone, WinCLIPConfig(scales=(2, 5)))
    with pytest.raises(ValueError, match="distinct positive"):
        WinCLIPConfig(scales=(2, 2))
    assert WinCLIPDetector.default_backbone_config().model_name == "ViT-B-16-plus-240"
    assert WinCLIPDetector.default_backbone_config().image_size == 240


@pytest.mark.parametrize("extra", [[], ["--reference_images", "2"]])
def test_test_py_evaluates_winclip_without_training(synthetic_root, tmp_path, extra):
    cli.test_main(["--method", "winclip", "--data_path", synthetic_root, "--save_path", str(tmp_path), *TINY_FLAGS, *extra])
    content = json.loads((tmp_path / "results.json").read_text())
    assert content["settings"]["method"] == "winclip" and content["settings"]["checkpoint"] is None
    assert [row["class"] for row in content["classes"]] == ["fabric", "washer"]
    if extra:
        assert content["settings"]["references"]["images_per_class"] == {"fabric": 2, "washer": 2}
