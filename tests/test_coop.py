"""CoOp (AnomalyCLIP's baseline): context vectors spliced into "normal/anomalous [cls]", scores and
maps as AnomalyCLIP on plain CLIP features, a training step and train.py -> test.py."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anomaly_clip import cli
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip import load
from anomaly_clip.methods.anomalyclip import AnomalyCLIPTraining
from anomaly_clip.methods.coop import CoOpConfig, CoOpDetector
from anomaly_clip.methods.coop.training import train

from conftest import TINY_FLAGS, train_config



@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=2, n_test_normal=2,
                                      n_test_anomalous=2, image_size=64, seed=11)


@pytest.fixture()
def detector(tiny_backbone):
    torch.manual_seed(8)
    return CoOpDetector(tiny_backbone, CoOpConfig(n_ctx=4)).eval()


def reference_text(clip, ctx, name):
    """Each sentence's X tokens replaced by the context vectors, CLIP's text tower, EOT feature."""
    rows = []
    for state in ("normal", "anomalous"):
        tokens = open_clip.tokenize([" ".join(["X"] * ctx.shape[0]) + f" {state} {name}."])
        x = clip.token_embedding(tokens)
        x = torch.cat([x[:, :1], ctx[None], x[:, 1 + ctx.shape[0]:]], dim=1) + clip.positional_embedding
        for block in clip.transformer.resblocks:
            x = block(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[0, tokens.argmax(dim=-1)[0]] @ clip.text_projection
        rows.append(x / x.norm())
    return torch.stack(rows)


def test_text_features_match_spliced_reference(detector, tiny_backbone):
    with torch.no_grad():
        ours = detector.prompt_learner(tiny_backbone, ["metal_nut", "fabric"])
        for row, name in zip(ours, ["metal nut", "fabric"]):
            torch.testing.assert_close(row, reference_text(tiny_backbone.clip, detector.prompt_learner.ctx, name),
                                       rtol=1e-5, atol=1e-5)


def test_scores_and_maps_are_anomalyclips_on_plain_clip(detector, tiny_backbone):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 56, 56)
    names = ["washer", "fabric"]
    prediction = detector(images, names)
    visual = tiny_backbone.clip.visual
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(images)
    finally:
        visual.output_tokens = False
    for b, name in enumerate(names):
        with torch.no_grad():
            text = reference_text(tiny_backbone.clip, detector.prompt_learner.ctx, name)
        g = pooled[b] / pooled[b].norm()
        torch.testing.assert_close(prediction.scores[b], torch.softmax(g @ text.T / 0.07, dim=-1)[1],
                                   rtol=1e-4, atol=1e-5)
        patches = F.normalize(tokens[b] @ visual.proj, dim=-1)
        probabilities = torch.softmax(patches @ text.T / 0.07, dim=-1).T.reshape(1, 2, 4, 4)
        up = F.interpolate(probabilities, size=(56, 56), mode="bilinear")[0]
        expected = scipy.ndimage.gaussian_filter(((up[1] + 1 - up[0]) / 2).double().numpy(), sigma=4)
        torch.testing.assert_close(prediction.maps[b], torch.from_numpy(expected).float(), rtol=1e-4, atol=1e-5)
    assert detector.dpam_config() is None
    assert CoOpDetector(tiny_backbone, CoOpConfig(n_ctx=4, dpam_layers=20)).dpam_config().dpam_layers == 20


def test_frozen_text_is_a_buffer_reused_until_the_context_changes(detector, monkeypatch):
    calls = []
    forward = detector.prompt_learner.forward
    monkeypatch.setattr(detector.prompt_learner, "forward", lambda *a: calls.append(a[1]) or forward(*a))
    with torch.no_grad():
        first = detector.text_rows(["fabric", "washer", "fabric"], 3)
        torch.testing.assert_close(detector.text_rows(["washer", "fabric"], 2), first[1:], rtol=0, atol=0)
        assert calls == [["fabric", "washer"]]
        assert "text.features" in dict(detector.named_buffers()) and "text.features" not in detector.state_dict()
        detector.prompt_learner.ctx.add_(0.5)
        detector.text_parts_changed()  # after editing the context by hand
        changed = detector.text_rows(["fabric", "washer", "fabric"], 3)
        assert not torch.allclose(first, changed)
    assert len(calls) == 2
    detector.train()
    with torch.no_grad():
        detector.prompt_learner.ctx.add_(0.5)
    detector.eval()  # leaving training drops the frozen rows
    with torch.no_grad():
        torch.testing.assert_close(detector.text_rows(["fabric"], 1)[0],
                                   detector.prompt_learner(detector.backbone, ["fabric"])[0])


def test_training_step_changes_only_the_context(tiny_backbone, synthetic_root, tmp_path):
    torch.manual_seed(0)
    detector = CoOpDetector(tiny_backbone, CoOpConfig(n_ctx=4, features_list=(12, 24)))
    backbone_before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    before = detector.prompt_learner.ctx.detach().clone()
    dataset = AnomalyDataset(load_samples(synthetic_root, split="test"), synthetic_root, image_size=56)
    result = train(detector, dataset, train_config(tmp_path, AnomalyCLIPTraining(epoch=1, batch_size=8))).stages[""]
    assert np.isfinite(result.history[0]["loss"]) and "seg_loss" in result.history[0]
    assert all(torch.equal(v, backbone_before[k]) for k, v in tiny_backbone.state_dict().items())
    assert not torch.equal(before, detector.prompt_learner.ctx)
    assert sorted(detector.trainable_state_dict()) == ["prompt_learner.ctx"]
    assert (tmp_path / "epoch_1.pth").is_file() and not list(tmp_path.glob("official*"))
    reloaded = load(tmp_path / "epoch_1.pth", backbone=tiny_backbone)
    torch.testing.assert_close(reloaded.prompt_learner.ctx, detector.prompt_learner.ctx)


def test_train_py_one_epoch_then_test_py(synthetic_root, tmp_path):
    last = cli.train_main(["--method", "coop", "--train_data_path", synthetic_root, "--save_path", str(tmp_path / "c"),
                           "--epoch", "1", "--batch_size", "4", "--n_ctx", "4", *TINY_FLAGS])
    assert last == tmp_path / "c" / "epoch_1.pth"
    result = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path",
                            str(tmp_path / "t"), "--device", "cpu", "--num_workers", "0"])
    assert result["settings"]["method"] == "coop" and result["settings"]["method_config"]["n_ctx"] == 4
    assert [row.name for row in result["report"].rows] == ["fabric", "washer"]
