"""Backbone loading, position-embedding resizing and DPAM against plain references."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from anomaly_clip.cli.errors import CLI_OPTIONS
from anomaly_clip.clip.backbone import (BackboneConfig, WeightsNotFoundError, build_clip_model,
                                        load_backbone, resize_position_embedding)
from anomaly_clip.clip.dpam import DPAMConfig, block_attention, encode_image

from conftest import TINY, tiny_config


def reference_attention(block, x, kind):
    """Explicit per-head attention: project, split heads, softmax(a b^T * d^-1/2) v, merge, project."""
    attention = block.attn
    heads = attention.num_heads
    batch, length, width = x.shape
    head_dim = width // heads
    qkv = x @ attention.in_proj_weight.T + attention.in_proj_bias
    q, k, v = qkv.split(width, dim=-1)
    parts = {"q": q, "k": k, "v": v}
    a, b = parts[kind[0]], parts[kind[1]]
    out = torch.zeros_like(x)
    for h in range(heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        weights = torch.softmax(a[..., cols] @ b[..., cols].transpose(1, 2) * head_dim ** -0.5, dim=-1)
        out[..., cols] = weights @ v[..., cols]
    return out @ attention.out_proj.weight.T + attention.out_proj.bias


def reference_block(block, x, kind="qk", mlp=True):
    x = x + reference_attention(block, block.ln_1(x), kind)
    if mlp:
        x = x + block.mlp(block.ln_2(x))
    return x


@pytest.mark.parametrize("kind", ["qk", "vv", "qq", "kk"])
def test_attention_kinds_match_explicit_reference(tiny_backbone, kind):
    block = tiny_backbone.visual.transformer.resblocks[7]
    x = torch.randn(2, 17, tiny_backbone.vision_width)
    (ours,) = block_attention(block, x, (kind,))
    torch.testing.assert_close(ours, reference_attention(block, x, kind), rtol=1e-5, atol=1e-5)


def test_qk_attention_equals_torch_multihead(tiny_backbone):
    block = tiny_backbone.visual.transformer.resblocks[0]
    x = torch.randn(2, 10, tiny_backbone.vision_width)
    (ours,) = block_attention(block, x, ("qk",))
    torch.testing.assert_close(ours, block.attn(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


def test_without_dpam_equals_open_clip_encode_image(tiny_backbone):
    images = torch.randn(3, 3, 56, 56)
    ours = encode_image(tiny_backbone, images).global_embedding
    torch.testing.assert_close(ours, tiny_backbone.clip.encode_image(images), rtol=1e-5, atol=1e-5)


def test_resized_input_equals_open_clip_with_resized_embedding(tiny_backbone):
    images = torch.randn(2, 3, 98, 98)
    reference = copy.deepcopy(tiny_backbone.clip)
    pos = reference.visual.positional_embedding.data
    patches = pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(7, 7), mode="bilinear", align_corners=False)
    reference.visual.positional_embedding.data = torch.cat([pos[:1], patches.permute(0, 2, 3, 1).reshape(49, -1)])
    ours = encode_image(tiny_backbone, images).global_embedding
    torch.testing.assert_close(ours, reference.encode_image(images), rtol=1e-5, atol=1e-5)


def test_position_embedding_resize_keeps_class_row_and_parameters(tiny_backbone):
    before = tiny_backbone.visual.positional_embedding.detach().clone()
    resized = tiny_backbone.position_embedding((37, 37), torch.float32)
    assert resized.shape == (1 + 37 * 37, tiny_backbone.vision_width)
    torch.testing.assert_close(resized[0], before[0])
    encode_image(tiny_backbone, torch.randn(1, 3, 518, 518)[:, :, :70, :70])
    torch.testing.assert_close(tiny_backbone.visual.positional_embedding, before)
    torch.testing.assert_close(tiny_backbone.position_embedding((37, 37), torch.float32), resized, rtol=0, atol=0)
    # the configured size's embedding is a buffer, resized once (again after moves and casts)
    native = tiny_backbone.position_embedding(tiny_backbone.grid_size(), torch.float32)
    assert native is tiny_backbone.resized_position_embedding
    assert "resized_position_embedding" not in tiny_backbone.state_dict()


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "bicubic_antialias"])
def test_resize_position_embedding_matches_interpolate(mode):
    pos = torch.randn(1 + 24 * 24, 8)
    out = resize_position_embedding(pos, (37, 37), mode)
    grid = F.interpolate(pos[1:].reshape(1, 24, 24, 8).permute(0, 3, 1, 2), size=(37, 37),
                         mode=mode.split("_")[0], align_corners=False, antialias=mode.endswith("_antialias"))
    torch.testing.assert_close(out[1:], grid.permute(0, 2, 3, 1).reshape(-1, 8))
    torch.testing.assert_close(out[0], pos[0])


def _reference_dual_path(backbone, images, layers, kind):
    """Dual path written out: V-V branch from ln_1 of the original path, no MLP on the V-V branch."""
    visual = backbone.visual
    x = backbone.embed_image(images)
    blocks = visual.transformer.resblocks
    first = len(blocks) - 19
    side = None
    tokens = {}
    for i, block in enumerate(blocks):
        if i >= first:
            side = x if side is None else side
            side = side + reference_attention(block, block.ln_1(x), kind)
        x = reference_block(block, x)
        if i + 1 in layers:
            tokens[i + 1] = side if side is not None else x
    return x, tokens


@pytest.mark.parametrize("kind", ["vv", "qq", "kk"])
def test_dual_path_matches_reference(tiny_backbone, kind):
    images = torch.randn(2, 3, 56, 56)
    layers = [3, 6, 12, 18, 24]
    features = encode_image(tiny_backbone, images, layers, DPAMConfig(dpam_layers=20, attention=kind))
    final, tokens = _reference_dual_path(tiny_backbone, images, layers, kind)
    for layer in layers:
        torch.testing.assert_close(features.layer_tokens[layer], tokens[layer], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features.global_embedding, final[:, 0] @ tiny_backbone.visual.proj,
                               rtol=1e-4, atol=1e-5)


def test_dual_path_original_branch_is_open_clip_without_ln_post(tiny_backbone):
    images = torch.randn(2, 3, 56, 56)
    visual = tiny_backbone.visual
    hidden = visual.transformer(visual._embeds(images))
    features = encode_image(tiny_backbone, images, [24], DPAMConfig())
    torch.testing.assert_close(features.global_embedding, hidden[:, 0] @ visual.proj, rtol=1e-4, atol=1e-5)
    # with ln_post it is exactly open_clip's image embedding
    torch.testing.assert_close(visual.ln_post(hidden[:, 0]) @ visual.proj, tiny_backbone.clip.encode_image(images),
                               rtol=1e-4, atol=1e-5)


def test_single_path_keeps_mlp(tiny_backbone):
    images = torch.randn(2, 3, 56, 56)
    features = encode_image(tiny_backbone, images, [6, 24], DPAMConfig(structure="single"))
    x = tiny_backbone.embed_image(images)
    expected = {}
    for i, block in enumerate(tiny_backbone.visual.transformer.resblocks):
        x = reference_block(block, x, "vv" if i >= 5 else "qk")
        if i + 1 in (6, 24):
            expected[i + 1] = x
    for layer in (6, 24):
        torch.testing.assert_close(features.layer_tokens[layer], expected[layer], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features.global_embedding, tiny_backbone.project_tokens(x[:, 0]), rtol=1e-4, atol=1e-5)


def test_dpam_layer_count_and_validation(tiny_backbone):
    assert DPAMConfig(dpam_layers=20).first_block(24) == 5
    assert DPAMConfig(dpam_layers=1).first_block(24) == 24
    with pytest.raises(ValueError):
        DPAMConfig(dpam_layers=30).first_block(24)
    with pytest.raises(ValueError):
        DPAMConfig(attention="xx")
    with pytest.raises(ValueError):
        encode_image(tiny_backbone, torch.randn(1, 3, 56, 56), [25])


def test_text_encoder_equals_open_clip(tiny_backbone):
    texts = ["a photo of a damaged object.", "object."]
    tokens = open_clip.tokenize(texts)
    torch.testing.assert_close(tiny_backbone.encode_text(texts), tiny_backbone.clip.encode_text(tokens),
                               rtol=1e-5, atol=1e-5)


def test_activation_is_an_explicit_setting():
    quick = build_clip_model(tiny_config(activation="quick_gelu"))
    exact = build_clip_model(tiny_config(activation="gelu"))
    assert type(quick.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    assert isinstance(exact.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    with pytest.raises(ValueError):
        tiny_config(activation="relu")


def _openai_state_dict(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.update(input_resolution=torch.tensor(56), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    return state


def test_openai_format_state_dict_loads_to_same_outputs(tiny_backbone, tmp_path):
    path = tmp_path / "tiny-openai.pt"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in _openai_state_dict(tiny_backbone.clip).items()},
               path)
    loaded = load_backbone(tiny_config(random_init=False, weights_path=str(path)), device="cpu")
    images = torch.randn(2, 3, 56, 56)
    expected_clip = copy.deepcopy(tiny_backbone.clip).half().float()
    torch.testing.assert_close(encode_image(loaded, images).global_embedding, expected_clip.encode_image(images),
                               rtol=1e-5, atol=1e-5)


def test_open_clip_checkpoint_and_jit_archive_load(tiny_backbone, tmp_path):
    wrapped = tmp_path / "open_clip.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_backbone.clip.state_dict().items()}}, wrapped)
    scripted = tmp_path / "jit.pt"
    torch.jit.save(torch.jit.script(copy.deepcopy(tiny_backbone.clip)), scripted)
    images = torch.randn(1, 3, 56, 56)
    expected = tiny_backbone.clip.encode_image(images)
    for path in (wrapped, scripted):
        loaded = load_backbone(tiny_config(random_init=False, weights_path=str(path)), device="cpu")
        torch.testing.assert_close(loaded.clip.encode_image(images), expected, rtol=1e-5, atol=1e-5)


def test_missing_weights_file_gives_actionable_error(tmp_path):
    missing = tmp_path / "ViT-L-14-336px.pt"
    with pytest.raises(WeightsNotFoundError, match="ViT-L-14-336px.pt"):
        load_backbone(tiny_config(random_init=False, weights_path=str(missing)))


def test_uncached_pretrained_tag_offline_gives_actionable_error(tmp_path):
    config = BackboneConfig(cache_dir=str(tmp_path), download=False)
    with pytest.raises(WeightsNotFoundError, match="weights_path=FILE") as caught:
        load_backbone(config)
    assert "downloading is off" in str(caught.value) and str(tmp_path) in str(caught.value)
    assert "--weights FILE" in caught.value.describe(CLI_OPTIONS)


def test_no_weight_source_is_an_error():
    with pytest.raises(WeightsNotFoundError, match="random_init"):
        build_clip_model(BackboneConfig(model_name=TINY, pretrained=None))


def test_wrong_architecture_weights_are_rejected(tmp_path):
    other = build_clip_model(tiny_config())
    state = {k: v for k, v in other.state_dict().items() if not k.startswith("visual.transformer.resblocks.23")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ValueError, match="Missing keys"):
        load_backbone(tiny_config(random_init=False, weights_path=str(path)))


def test_backbone_is_frozen(tiny_backbone):
    assert not any(p.requires_grad for p in tiny_backbone.parameters())
    tiny_backbone.train()
    assert not tiny_backbone.clip.training
