"""AnomalyCLIP against a plain reference of the official computation, on a tiny model."""
from __future__ import annotations

import numpy as np
import open_clip
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from anomaly_clip.methods import load
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.clip.dpam import DPAMConfig, encode_image
from anomaly_clip.engine.losses import dice_loss, focal_loss
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

from conftest import tiny_config


@pytest.fixture()
def detector(tiny_backbone):
    torch.manual_seed(1)
    return AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(features_list=(6, 12, 18, 24)))


def reference_text_features(backbone, learner):
    """Sentence embeddings with context vectors spliced in, deep tokens overwritten block by block."""
    clip = backbone.clip
    features = []
    for state, ctx in (("object.", learner.ctx_pos[0, 0]), ("damaged object.", learner.ctx_neg[0, 0])):
        tokens = open_clip.tokenize([" ".join(["X"] * learner.n_ctx) + " " + state])
        x = clip.token_embedding(tokens)
        x = torch.cat([x[:, :1], ctx[None], x[:, 1 + learner.n_ctx:]], dim=1)
        x = x + clip.positional_embedding
        for i, block in enumerate(clip.transformer.resblocks):
            if 1 <= i <= learner.depth - 1:
                x = x.clone()
                x[:, 1:1 + learner.t_n_ctx] = learner.compound_prompts_text[i - 1].half().float()
            x = block(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[0, tokens.argmax(dim=-1)[0]] @ clip.text_projection
        features.append(x / x.norm())
    return torch.stack(features)


def test_text_features_with_deep_tokens_match_reference(detector, tiny_backbone):
    with torch.no_grad():
        ours = detector.prompt_learner(tiny_backbone)
        expected = reference_text_features(tiny_backbone, detector.prompt_learner)
    assert ours.shape == (1, 2, tiny_backbone.embed_dim)
    torch.testing.assert_close(ours[0], expected, rtol=1e-5, atol=1e-5)


def test_deep_tokens_are_rounded_to_half_by_default(detector, tiny_backbone):
    with torch.no_grad():
        detector.prompt_learner.compound_prompts_text[0].add_(1e-4 * torch.randn_like(detector.prompt_learner.compound_prompts_text[0]))
        rounded = detector.prompt_learner(tiny_backbone)
        detector.prompt_learner.half_precision_deep_tokens = False
        exact = detector.prompt_learner(tiny_backbone)
    assert not torch.equal(rounded, exact)


def reference_prediction(backbone, text, images, layers, sigma=4.0):
    """Per-image loop of the official test computation with scipy's gaussian_filter."""
    visual = encode_image(backbone, images, layers, DPAMConfig())
    scores, maps = [], []
    size = images.shape[-1]
    for b in range(images.shape[0]):
        g = visual.global_embedding[b] / visual.global_embedding[b].norm()
        scores.append(torch.softmax(g @ text.T / 0.07, dim=-1)[1])
        total = torch.zeros(size, size)
        for layer in layers:
            tokens = backbone.project_tokens(visual.layer_tokens[layer][b])
            tokens = tokens / tokens.norm(dim=-1, keepdim=True)
            probabilities = torch.softmax(tokens @ text.T / 0.07, dim=-1)[1:]
            side = int(probabilities.shape[0] ** 0.5)
            grid = probabilities.reshape(side, side, 2).permute(2, 0, 1)[None]
            up = F.interpolate(grid, size=(size, size), mode="bilinear")[0]
            total += (up[1] + 1 - up[0]) / 2
        maps.append(torch.from_numpy(scipy.ndimage.gaussian_filter(total.numpy(), sigma=sigma)))
    return torch.stack(scores), torch.stack(maps)


def test_image_score_and_anomaly_map_match_reference(detector, tiny_backbone):
    images = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        scores, maps = detector.eval()(images)
        text = detector.prompt_learner(tiny_backbone)[0]
        ref_scores, ref_maps = reference_prediction(tiny_backbone, text, images, [6, 12, 18, 24])
    torch.testing.assert_close(scores, ref_scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps, ref_maps, rtol=1e-4, atol=1e-5)


def reference_glocal_loss(detector, backbone, images, labels, masks):
    learner = detector.prompt_learner
    text = learner(backbone)[0]
    visual = encode_image(backbone, images, [6, 12, 18, 24], DPAMConfig())
    g = F.normalize(visual.global_embedding, dim=-1)
    loss = F.cross_entropy(g @ text.T / 0.07, labels)
    size = images.shape[-1]
    seg = 0
    for layer in [6, 12, 18, 24]:
        tokens = F.normalize(backbone.project_tokens(visual.layer_tokens[layer]), dim=-1)
        probabilities = torch.softmax(tokens @ text.T / 0.07, dim=-1)[:, 1:]
        side = int(probabilities.shape[1] ** 0.5)
        grid = probabilities.reshape(-1, side, side, 2).permute(0, 3, 1, 2)
        up = F.interpolate(grid, size=(size, size), mode="bilinear")
        # focal: clamp one-hot to [1e-5, 1 - 1e-5], p_t = <one_hot, p> + 1e-5, mean of -(1-p_t)^2 log p_t
        one_hot = torch.stack([1 - masks, masks], dim=1).clamp(1e-5, 1 - 1e-5)
        pt = (one_hot * up).sum(dim=1) + 1e-5
        seg = seg + (-(1 - pt) ** 2 * pt.log()).mean()
        for prob, target in ((up[:, 1], masks), (up[:, 0], 1 - masks)):
            dice = [(2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(prob, target)]
            seg = seg + 1 - torch.stack(dice).mean()
    return loss + 4 * seg


def test_glocal_loss_and_gradient_match_reference(detector, tiny_backbone):
    torch.manual_seed(3)
    images = torch.randn(2, 3, 56, 56)
    labels = torch.tensor([0, 1])
    masks = torch.zeros(2, 56, 56)
    masks[1, 10:30, 20:40] = 1
    detector.train()
    ours = detector.glocal_loss(detector.image_features(images), labels, masks[:, None])["loss"]
    params = list(detector.prompt_learner.parameters())
    ours_grad = torch.autograd.grad(ours, params, allow_unused=True)
    expected = reference_glocal_loss(detector, tiny_backbone, images, labels, masks)
    expected_grad = torch.autograd.grad(expected, params, allow_unused=True)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grad, expected_grad):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * float(b.abs().max()))
    assert ours_grad[0].abs().sum() > 0


def test_global_only_loss_for_data_without_masks(tiny_backbone):
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(seg_loss_weight=0.0))
    images = torch.randn(2, 3, 56, 56)
    losses = detector.glocal_loss(detector.image_features(images), torch.tensor([0, 1]), torch.zeros(2, 1, 56, 56))
    assert set(losses) == {"image_loss", "loss"}
    torch.testing.assert_close(losses["loss"], losses["image_loss"])


def test_focal_and_dice_hand_computed():
    probabilities = torch.tensor([[[[0.9]], [[0.1]]]])  # one pixel, normal prob 0.9
    target = torch.zeros(1, 1, 1)
    pt = 0.9 * (1 - 1e-5) + 0.1 * 1e-5 + 1e-5
    torch.testing.assert_close(focal_loss(probabilities, target), torch.tensor(-(1 - pt) ** 2 * np.log(pt)).float())
    prediction = torch.tensor([[0.5, 0.5]])
    torch.testing.assert_close(dice_loss(prediction, torch.tensor([[1.0, 0.0]])), torch.tensor(1 - 2.0 / 3.0))


def test_object_aware_variant_uses_class_rows(tiny_backbone):
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(object_classes=("bottle", "metal_nut"))).eval()
    text = detector.text_features()
    assert text.shape[0] == 2
    images = torch.randn(2, 3, 56, 56)
    both = detector(images, ["metal_nut", "bottle"])
    single = AnomalyCLIP.forward(detector, images[:1], ["metal_nut"])
    torch.testing.assert_close(both.scores[:1], single.scores)
    with pytest.raises(KeyError):
        detector(images, ["screw", "bottle"])


def test_official_checkpoint_imports_with_identical_outputs(detector, tmp_path, tiny_backbone):
    official = detector.official_checkpoints(epoch=15)["official_epoch_15.pth"]
    assert set(official) == {"prompt_learner"}
    names = set(official["prompt_learner"])
    assert {"ctx_pos", "ctx_neg", "compound_prompts_text.0", "compound_prompt_projections.7.weight",
            "token_prefix_pos", "tokenized_prompts_neg"} <= names
    assert official["prompt_learner"]["compound_prompt_projections.0.weight"].shape == (896, 32)
    path = tmp_path / "epoch_15.pth"
    torch.save(official, path)
    imported = load(path, backbone=tiny_backbone, method_config={"features_list": (6, 12, 18, 24)})
    images = torch.randn(2, 3, 56, 56)
    expected = detector.eval()(images)
    got = imported(images)
    torch.testing.assert_close(got.scores, expected.scores)
    torch.testing.assert_close(got.maps, expected.maps)


def test_own_checkpoint_round_trip_needs_no_flags(detector, tmp_path):
    path = save_checkpoint(tmp_path / "model.pth", detector)
    restored = load(path, device="cpu")
    assert restored.config == detector.config
    assert restored.backbone.config == detector.backbone.config
    for key, value in detector.trainable_state_dict().items():
        torch.testing.assert_close(restored.trainable_state_dict()[key], value)


def test_official_checkpoint_with_wrong_sizes_is_explained(tiny_backbone, tmp_path):
    other = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(n_ctx=8))
    path = tmp_path / "epoch_1.pth"
    torch.save(other.official_checkpoints(epoch=1)["official_epoch_1.pth"], path)
    with pytest.raises(ValueError, match="n_ctx"):
        load(path, backbone=tiny_backbone)


def test_frozen_text_features_are_a_buffer_refreshed_when_prompts_change(detector):
    detector.eval()
    with torch.no_grad():
        first = detector.text_features()
        assert detector.text_features() is first and first is detector.frozen_text_features
        detector.prompt_learner.ctx_neg.add_(0.01)
        detector.text_parts_changed()  # after editing prompts by hand
        updated = detector.text_features()
    assert updated is not first and not torch.equal(updated, first)
    torch.testing.assert_close(updated, detector.prompt_learner(detector.backbone))
    detector.train()
    with torch.no_grad():
        detector.prompt_learner.ctx_neg.add_(0.01)
    detector.eval()  # leaving training recomputes them
    with torch.no_grad():
        torch.testing.assert_close(detector.text_features(), detector.prompt_learner(detector.backbone))


def test_tiny_config_fixture_matches_reference_settings():
    assert AnomalyCLIP.default_backbone_config().activation == "quick_gelu"
    assert AnomalyCLIP.default_backbone_config().pos_embed_interpolation == "bilinear"
    assert tiny_config().model_name == "anomaly-clip-tiny"
