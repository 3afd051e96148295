"""AA-CLIP against plain references written here, on a tiny random CLIP."""
from __future__ import annotations

import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from anomaly_clip.methods.aaclip.adapters import ImageAdapter, ResidualAdapter, TextAdapter
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.methods import load
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.methods.aaclip.class_prompts import (DATASET_DESCRIPTIONS, PromptEnsemble, class_text_anchors, describe_class,
                                        read_descriptions)
from anomaly_clip.data.registry import get_dataset_info, normalize_name
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.methods.anomalyclip_adapters import PromptAdapterConfig, PromptAdapterDetector
from anomaly_clip.methods.aaclip import (
    AAClipConfig,
    AAClipDetector,
    disentangle_loss,
    fuse_class_scores,
    similarity_logits,
    stage1_patch_features,
)

IMAGE_SIZE = 112
LEVELS = (6, 12, 18, 24)


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return load_backbone(model_name="anomaly-clip-tiny", random_init=True, image_size=IMAGE_SIZE,
                         activation="gelu", pos_embed_interpolation="bicubic_antialias", device="cpu")


def make_detector(backbone, **config) -> AAClipDetector:
    torch.manual_seed(1)
    detector = AAClipDetector(backbone, AAClipConfig(**config))
    with torch.no_grad():  # xavier weights are tiny for such small widths: make adapters matter
        for parameter in detector.parameters():
            if parameter.requires_grad:
                parameter.mul_(3)
    return detector.eval()


@pytest.fixture(scope="module")
def detector(backbone):
    return make_detector(backbone, dataset="MVTec")


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)


@pytest.fixture(scope="module")
def masks():
    mask = torch.zeros(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    mask[0, :, 10:40, 20:60] = 1
    mask[2, :, 70:100, 5:30] = 1
    return mask


# ---- plain references --------------------------------------------------------------------------
def ref_adapt(x, weight_matrix, blend=0.1):
    adapted = F.leaky_relu(x @ weight_matrix.T, negative_slope=0.01)
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    return blend * adapted + (1 - blend) * x


def ref_text_features(detector, sentences):
    """Full 77-token text tower with adapters after the first blocks and the LeakyReLU projection."""
    clip = detector.backbone.clip
    tokens = open_clip.tokenize(sentences)
    x = clip.token_embedding(tokens) + clip.positional_embedding
    adapters = [a.linear.weight for a in detector.text_adapter.blocks.adapters]
    for index, block in enumerate(clip.transformer.resblocks):
        x = block(x, attn_mask=clip.attn_mask)
        if index < len(adapters):
            x = ref_adapt(x, adapters[index])
    pooled = clip.ln_final(x)[torch.arange(len(sentences)), tokens.argmax(dim=-1)]
    return F.leaky_relu(pooled @ detector.text_adapter.projection.linear.weight.T)


def ref_anchor(detector, description):
    normal = [f"{description}.", f"a photo of {description}.", f"a {description}.", f"a photo of a {description}.",
              f"the {description}.", f"a photo of the {description}."]
    abnormal = []
    for state in (f"a damaged {description}", f"a broken {description}", f"a {description} with flaw",
                  f"a {description} with defect", f"a {description} with damage"):
        abnormal += [f"{state}.", f"a photo of {state}."]
    anchors = []
    for sentences in (normal, abnormal):
        features = ref_text_features(detector, sentences)
        mean = (features / features.norm(dim=-1, keepdim=True)).mean(dim=0)
        anchors.append(mean / mean.norm())
    return torch.stack(anchors, dim=1)  # (E, 2)


def ref_image_features(detector, images):
    backbone = detector.backbone
    x = backbone.embed_image(images)
    adapters = [a.linear.weight for a in detector.image_adapter.blocks.adapters]
    levels = []
    for index, block in enumerate(backbone.visual.transformer.resblocks):
        x = block(x)
        if index < len(adapters):
            x = ref_adapt(x, adapters[index])
        if index + 1 in LEVELS:
            levels.append(backbone.visual.ln_post(x[:, 1:]))
    patches = [F.normalize(t @ p.linear.weight.T, dim=-1)
               for t, p in zip(levels, detector.image_adapter.level_projections)]
    detection = F.normalize(levels[-1] @ detector.image_adapter.detection_projection.linear.weight.T, dim=-1)
    return patches, detection.mean(dim=1)


def ref_vv_features(backbone, images, axis):
    """Stage-1 features: last 19 blocks with V-V attention (MLP kept) over ``axis``."""
    visual = backbone.visual
    blocks = visual.transformer.resblocks
    x = backbone.embed_image(images)
    plain = x
    for block in blocks:
        plain = block(plain)
    for index, block in enumerate(blocks):
        if index < len(blocks) - 19:
            x = block(x)
            continue
        attention = block.attn
        heads = attention.num_heads
        h = block.ln_1(x)
        v = F.linear(h, attention.in_proj_weight[2 * h.shape[-1]:], attention.in_proj_bias[2 * h.shape[-1]:])
        b, n, w = v.shape
        v = v.reshape(b, n, heads, w // heads)
        scale = (w // heads) ** -0.5
        if axis == "batch":  # attention among the images, at each token position
            weights = torch.einsum("bnhd,cnhd->nhbc", v, v).mul(scale).softmax(dim=-1)
            mixed = torch.einsum("nhbc,cnhd->bnhd", weights, v)
        else:
            weights = torch.einsum("bnhd,bmhd->bhnm", v, v).mul(scale).softmax(dim=-1)
            mixed = torch.einsum("bhnm,bmhd->bnhd", weights, v)
        x = x + attention.out_proj(mixed.reshape(b, n, w))
        x = x + block.mlp(block.ln_2(x))
    glob = visual.ln_post(plain[:, 0]) @ visual.proj
    glob = glob / glob.norm(dim=-1, keepdim=True)
    patches = visual.ln_post(x[:, 1:]) @ visual.proj
    return patches / patches.norm(dim=-1, keepdim=True) + glob[:, None]


def ref_focal(probs, mask, gamma=2.0, smooth=1e-5):
    target = mask.reshape(mask.shape[0], -1).long()
    p = probs.reshape(probs.shape[0], 2, -1)
    one_hot = torch.stack([1 - target, target], dim=1).float().clamp(smooth, 1 - smooth)
    pt = (one_hot * p).sum(dim=1) + smooth
    return (-(1 - pt) ** gamma * pt.log()).mean()


def ref_dice(pred, target):
    pred, target = pred.reshape(pred.shape[0], -1), target.reshape(target.shape[0], -1)
    coefficient = (2 * (pred * target).sum(1) + 1) / (pred.sum(1) + target.sum(1) + 1)
    return 1 - coefficient.sum() / pred.shape[0]


def ref_seg_probs(features, anchors, size):
    side = int(math.isqrt(features.shape[1]))
    logits = 100.0 * torch.matmul(features, anchors)  # (B, N, 2)
    logits = logits.permute(0, 2, 1).reshape(features.shape[0], 2, side, side)
    logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    return torch.softmax(logits, dim=1)


def ref_seg_loss(probs, mask):
    mask = mask[:, 0]
    return ref_focal(probs, mask) + ref_dice(probs[:, 0], 1 - mask) + ref_dice(probs[:, 1], mask)


def ref_blur(grid, kernel_size, sigma):
    """Separable Gaussian blur with mirror padding (no edge repeat) in numpy, one map at a time."""
    radius = kernel_size // 2
    offsets = np.arange(kernel_size) - radius
    kernel = np.exp(-(offsets ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    padded = np.pad(grid, radius, mode="reflect")
    rows = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])
    return np.stack([np.convolve(col, kernel, mode="valid") for col in rows.T]).T


# ---- adapters -----------------------------------------------------------------------------------
def test_residual_adapter_matches_formula():
    torch.manual_seed(0)
    adapter = ResidualAdapter(16, weight=0.25)
    x = torch.randn(2, 5, 16)
    expected = ref_adapt(x, adapter.linear.weight, blend=0.25)
    torch.testing.assert_close(adapter(x), expected)
    # norm-matched: the adapter branch alone has the norm of the input token
    adapted = F.leaky_relu(adapter.linear(x))
    rescaled = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(rescaled.norm(dim=-1), x.norm(dim=-1))


def test_adapter_sizes_follow_backbone(backbone):
    detector = AAClipDetector(backbone, AAClipConfig(text_adapt_until=2, image_adapt_until=4))
    assert len(detector.text_adapter.blocks) == 2 and len(detector.image_adapter.blocks) == 4
    assert detector.text_adapter.blocks.adapters[0].linear.weight.shape == (backbone.text_width,) * 2
    assert detector.text_adapter.projection.linear.weight.shape == (backbone.embed_dim, backbone.text_width)
    assert detector.image_adapter.blocks.adapters[0].linear.weight.shape == (backbone.vision_width,) * 2
    assert detector.image_adapter.level_projections[0].linear.weight.shape == (backbone.embed_dim,
                                                                               backbone.vision_width)
    assert all(p.linear.bias is None for p in detector.image_adapter.level_projections)
    assert set(k.split(".")[0] for k in detector.trainable_state_dict()) == {"text_adapter", "image_adapter"}


def test_adapter_hook_passes_later_blocks_unchanged():
    adapter = TextAdapter(8, 4, count=2)
    x = torch.randn(1, 3, 8)
    assert torch.equal(adapter.blocks.after_block(2, x), x)
    assert not torch.equal(adapter.blocks.after_block(1, x), x)


def test_image_adapter_projections_and_detection_feature():
    torch.manual_seed(0)
    adapter = ImageAdapter(12, 6, features_list=(1, 2), count=1, activation=True)
    tokens = [torch.randn(2, 9, 12), torch.randn(2, 9, 12)]
    patches, detection = adapter(tokens)
    expected = F.normalize(F.leaky_relu(tokens[0] @ adapter.level_projections[0].linear.weight.T), dim=-1)
    torch.testing.assert_close(patches[0], expected)
    det = F.normalize(F.leaky_relu(tokens[1] @ adapter.detection_projection.linear.weight.T), dim=-1).mean(1)
    torch.testing.assert_close(detection, det)
    assert (detection.norm(dim=-1) < 1).all()  # mean of unit vectors, deliberately not renormalised


def test_config_rejects_bad_values(backbone):
    with pytest.raises(ValueError):
        AAClipConfig(features_list=(12, 6))
    with pytest.raises(ValueError):
        AAClipConfig(text_adapt_weight=1.5)
    with pytest.raises(ValueError):
        AAClipConfig(domain="space")
    with pytest.raises(ValueError):
        AAClipDetector(backbone, AAClipConfig(features_list=(6, 30)))


# ---- prompts ------------------------------------------------------------------------------------
def test_descriptive_names():
    assert describe_class("bottle", "MVTec") == "dark bottle"
    assert describe_class("metal_nut", "mvtec_ad") == "metal nut which has four notched edges"
    assert describe_class("pcb1", "visa") == "dual ultrasonic distance sensor pcb module"
    assert describe_class("Brain", "Brain") == "scan"
    assert describe_class("anything", "Colon_clinicDB") == "colon endoscopy image"
    assert describe_class("bottle", "my_factory") == "bottle"
    assert describe_class("metal_plate") == "metal plate"
    assert describe_class("bottle", "MVTec", {"bottle": "green bottle"}) == "green bottle"
    assert describe_class("object", "MVTec") == "object"


def test_description_tables_follow_the_dataset_registry():
    for dataset, table in DATASET_DESCRIPTIONS.items():
        info = get_dataset_info(dataset)
        assert info.name == dataset
        if table.names and info.classes:
            assert {normalize_name(c) for c in table.names} == {normalize_name(c) for c in info.classes}, dataset


def test_read_descriptions(tmp_path):
    path = tmp_path / "names.json"
    path.write_text('{"widget": "shiny blue widget"}')
    assert read_descriptions(str(path)) == {"widget": "shiny blue widget"}
    path.write_text('["widget"]')
    with pytest.raises(ValueError):
        read_descriptions(str(path))


def test_prompt_ensemble_sentences():
    normal, abnormal = PromptEnsemble().sentences("dark bottle")
    assert normal == ["dark bottle.", "a photo of dark bottle.", "a dark bottle.", "a photo of a dark bottle.",
                      "the dark bottle.", "a photo of the dark bottle."]
    assert len(abnormal) == 10 and abnormal[-1] == "a photo of a dark bottle with damage."


def test_text_anchors_match_reference(detector):
    with torch.no_grad():
        anchors = detector.compute_anchors(["dark bottle", "screw"])
        expected = torch.stack([ref_anchor(detector, "dark bottle"), ref_anchor(detector, "screw")])
    torch.testing.assert_close(anchors, expected, atol=2e-5, rtol=1e-4)
    # per-batch lookup with the dataset's descriptions, cached
    batch = detector.anchors_for(["bottle", "screw", "bottle"], 3)
    torch.testing.assert_close(batch, expected[[0, 1, 0]], atol=2e-5, rtol=1e-4)


def test_plain_clip_anchors_when_text_not_adapted(backbone):
    detector = make_detector(backbone, adapt_text=False)
    with torch.no_grad():
        anchors = detector.compute_anchors(["screw"])
        normal, _ = PromptEnsemble().sentences("screw")
        plain = F.normalize(backbone.encode_text(normal), dim=-1).mean(0)
    torch.testing.assert_close(anchors[0, :, 0], F.normalize(plain, dim=0), atol=2e-5, rtol=1e-4)


def test_anchor_bank_follows_text_adapter(backbone):
    detector = make_detector(backbone)
    before = detector.anchors_for(["screw"], 1).clone()
    assert detector.anchor_bank.shape[0] == 1 and "anchor_bank" not in detector.state_dict()
    state = {k: -v if k == "text_adapter.projection.linear.weight" else v
             for k, v in detector.trainable_state_dict().items()}
    detector.load_trainable_state_dict(state)  # loading empties the bank
    assert detector.anchor_bank.numel() == 0
    after = detector.anchors_for(["screw"], 1)
    assert not torch.allclose(before, after)
    with torch.no_grad():
        detector.text_adapter.projection.linear.weight.mul_(-1.0)
    detector.text_parts_changed()  # after editing text parameters by hand
    torch.testing.assert_close(detector.anchors_for(["screw"], 1), before)
    with torch.no_grad():
        detector.text_adapter.projection.linear.weight.mul_(-1.0)
    detector.text_parts_changed()
    after = detector.anchors_for(["screw"], 1)
    with torch.no_grad():
        expected = detector.compute_anchors(["screw"])
    torch.testing.assert_close(after, expected)


def test_class_text_anchors_batches_all_sentences():
    calls = []

    def encode(sentences):
        calls.append(len(sentences))
        return torch.arange(len(sentences) * 3, dtype=torch.float32).reshape(len(sentences), 3) + 1

    anchors = class_text_anchors(encode, ["a", "b"])
    assert calls == [32] and anchors.shape == (2, 3, 2)
    torch.testing.assert_close(anchors.norm(dim=1), torch.ones(2, 2))


# ---- image score and maps -----------------------------------------------------------------------
@pytest.mark.parametrize("dataset,kernel,sigma", [("MVTec", 7, 1.0), ("Brain", 9, 1.5)])
def test_prediction_matches_reference(backbone, images, dataset, kernel, sigma):
    detector = make_detector(backbone, dataset=dataset, domain="industrial" if kernel == 7 else "medical")
    names = ["bottle", "screw", "bottle"] if dataset == "MVTec" else ["Brain"] * 3
    prediction = detector(images, names)
    with torch.no_grad():
        patches, detection = ref_image_features(detector, images)
        anchors = torch.stack([ref_anchor(detector, describe_class(n, dataset)) for n in names])
        scores = ((detection[:, None] @ anchors)[:, 0, 1] + 1) / 2
        maps = torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)
        for features in patches:
            logits = 100.0 * torch.matmul(features, anchors)
            side = int(math.isqrt(features.shape[1]))
            grid = ((logits[..., 1] + 1 - logits[..., 0]) / 2).reshape(3, side, side)
            blurred = torch.from_numpy(np.stack([ref_blur(g, kernel, sigma) for g in grid.double().numpy()]))
            maps += F.interpolate(blurred.float()[:, None], size=IMAGE_SIZE, mode="bilinear",
                                  align_corners=True)[:, 0]
    assert detector.blur_parameters() == (kernel, sigma)
    torch.testing.assert_close(prediction.scores, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(prediction.maps, maps, atol=2e-3, rtol=1e-4)
    assert prediction.maps.dtype == torch.float32 and prediction.maps.shape == (3, IMAGE_SIZE, IMAGE_SIZE)


def test_similarities_stay_float32_under_autocast():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(2, 16, 8), dim=-1)
    anchors = F.normalize(torch.randn(2, 8, 2), dim=1)
    expected = similarity_logits(features, anchors)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = similarity_logits(features, anchors)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)


def test_blur_override(backbone):
    detector = make_detector(backbone, domain="medical", blur_kernel=5)
    assert detector.blur_parameters() == (5, 1.5)


def test_fused_class_scores_match_reference_evaluation():
    rng = np.random.default_rng(0)
    scores, maps = rng.random(6) * 0.3 + 0.4, rng.random((6, 5, 5)) * 40 - 3
    pixel = (maps - maps.min()) / (maps.max() - maps.min())
    image = (scores - scores.min()) / (scores.max() - scores.min())
    expected_industrial = 0.5 * pixel.max(axis=(1, 2)) + 0.5 * image
    expected_medical = pixel.max(axis=(1, 2))
    t_scores, t_maps = torch.from_numpy(scores).float(), torch.from_numpy(maps).float()
    peaks, floors = t_maps.flatten(1).max(dim=1).values, t_maps.flatten(1).min(dim=1).values
    np.testing.assert_allclose(fuse_class_scores(t_scores, peaks, floors, "industrial").numpy(),
                               expected_industrial, rtol=1e-5)
    np.testing.assert_allclose(fuse_class_scores(t_scores, peaks, floors, "medical").numpy(), expected_medical,
                               rtol=1e-5)


# ---- training losses ----------------------------------------------------------------------------
@pytest.mark.parametrize("axis", ["batch", "tokens"])
def test_stage1_features_match_reference(backbone, images, axis):
    with torch.no_grad():
        features = stage1_patch_features(backbone, images, [12, 24], dpam_layers=20, vv_axis=axis)
        expected = ref_vv_features(backbone, images, axis)
    torch.testing.assert_close(features[1], expected, atol=1e-4, rtol=1e-4)
    alone = stage1_patch_features(backbone, images[:1], [24], vv_axis=axis)[0]
    mixes_images = not torch.allclose(alone, features[1][:1], atol=1e-4)
    assert mixes_images == (axis == "batch")


def test_text_stage_loss_matches_reference(detector, images, masks):
    names = ["bottle", "screw", "bottle"]
    losses = detector.text_stage_loss(images, masks, names, disentangle_weight=0.3)
    with torch.no_grad():
        features = ref_vv_features(detector.backbone, images, "batch")
        anchors = torch.stack([ref_anchor(detector, describe_class(n, "MVTec")) for n in names])
        segmentation = ref_seg_loss(ref_seg_probs(features, anchors, IMAGE_SIZE), masks)
        disentangle = ((anchors[:, :, 0] * anchors[:, :, 1]).sum(1).mean()) ** 2
    torch.testing.assert_close(losses["segmentation"].detach(), segmentation, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(losses["disentangle"].detach(), disentangle, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(losses["loss"].detach(), segmentation + 0.3 * disentangle, atol=1e-4, rtol=1e-4)
    losses["loss"].backward()
    text_grads = [p.grad for p in detector.text_adapter.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in text_grads)
    assert all(p.grad is None for p in detector.image_adapter.parameters())
    detector.zero_grad(set_to_none=True)


def test_disentangle_term_is_square_of_batch_mean():
    normal = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    abnormal = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.0, 1.0]])
    anchors = torch.stack([normal, abnormal], dim=-1)  # inner products 0.6, 0, 1
    torch.testing.assert_close(disentangle_loss(anchors), torch.tensor((1.6 / 3) ** 2))


def test_text_stage_loss_all_levels(detector, images, masks):
    last = detector.text_stage_loss(images, masks, ["bottle"] * 3, loss_levels="last")
    every = detector.text_stage_loss(images, masks, ["bottle"] * 3, loss_levels="all")
    assert every["segmentation"].item() > last["segmentation"].item()


def test_image_stage_loss_matches_reference(detector, images, masks):
    names, labels = ["bottle", "screw", "bottle"], torch.tensor([1, 0, 1])
    losses = detector.image_stage_loss(images, masks, labels, names)
    with torch.no_grad():
        patches, detection = ref_image_features(detector, images)
        anchors = torch.stack([ref_anchor(detector, describe_class(n, "MVTec")) for n in names])
        logits = torch.matmul(detection.unsqueeze(1), anchors)[:, 0]
        classification = F.cross_entropy(logits, labels)
        segmentation = sum(ref_seg_loss(ref_seg_probs(f, anchors, IMAGE_SIZE), masks) for f in patches)
    torch.testing.assert_close(losses["classification"].detach(), classification, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(losses["segmentation"].detach(), segmentation, atol=1e-4, rtol=1e-4)
    losses["loss"].backward()
    assert all(p.grad is not None for p in detector.image_adapter.parameters())
    assert all(p.grad is None for p in detector.text_adapter.parameters())
    detector.zero_grad(set_to_none=True)


# ---- checkpoints --------------------------------------------------------------------------------
def test_official_checkpoint_round_trip(backbone, images, tmp_path):
    detector = make_detector(backbone, dataset="MVTec")
    for name, payload in detector.official_checkpoints(epoch=4, stage="").items():
        torch.save(payload, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image_adapter.pth", "image_adapter_4.pth",
                                                          "text_adapter.pth"]
    text = torch.load(tmp_path / "text_adapter.pth")
    assert sorted(text["text_adapter"]) == ["0.fc.0.weight", "1.fc.0.weight", "2.fc.0.weight", "3.fc.0.weight"]
    torch.testing.assert_close(text["text_adapter"]["3.fc.0.weight"], detector.text_adapter.projection.linear.weight)
    image = torch.load(tmp_path / "image_adapter_4.pth")
    assert image["epoch"] == 4
    assert sorted(image["image_adapter"]) == sorted(
        [f"layer_adapters.{i}.fc.0.weight" for i in range(6)] + [f"seg_proj.{i}.fc.weight" for i in range(4)]
        + ["det_proj.fc.weight"])
    expected = detector(images, ["bottle"] * 3)
    for source in (tmp_path, tmp_path / "image_adapter_4.pth"):
        loaded = load(source, backbone=backbone, method_config={"dataset": "MVTec"})
        assert isinstance(loaded, AAClipDetector) and loaded.config.adapt_text
        got = loaded(images, ["bottle"] * 3)
        torch.testing.assert_close(got.scores, expected.scores)
        torch.testing.assert_close(got.maps, expected.maps)


def test_official_checkpoint_with_relu_and_without_text(backbone, images, tmp_path):
    detector = make_detector(backbone, relu=True)
    image = detector.official_checkpoints(epoch=2, stage="image")
    assert "text_adapter.pth" not in image
    assert "seg_proj.0.fc.0.weight" in image["image_adapter.pth"]["image_adapter"]
    torch.save(image["image_adapter_2.pth"], tmp_path / "image_adapter_2.pth")
    loaded = load(tmp_path, backbone=backbone)
    assert loaded.config.relu and not loaded.config.adapt_text
    plain = make_detector(backbone, relu=True, adapt_text=False)
    plain.image_adapter.load_state_dict(detector.image_adapter.state_dict())
    torch.testing.assert_close(loaded(images).maps, plain(images).maps)


def test_official_checkpoint_errors(backbone, tmp_path):
    detector = make_detector(backbone)
    files = detector.official_checkpoints(epoch=1, stage="text")
    torch.save(files["text_adapter.pth"], tmp_path / "text_adapter.pth")
    with pytest.raises(ValueError, match="no image adapter"):
        load(tmp_path, backbone=backbone)
    image = detector.official_checkpoints(epoch=1, stage="image")["image_adapter.pth"]
    torch.save(image, tmp_path / "image_adapter.pth")
    with pytest.raises(ValueError, match="image_adapt_until"):
        load(tmp_path, backbone=backbone, method_config={"image_adapt_until": 5})


def test_own_checkpoint_round_trip(backbone, images, tmp_path):
    detector = make_detector(backbone, dataset="MVTec", relu=True, text_adapt_until=2)
    path = save_checkpoint(tmp_path / "model.pth", detector)
    loaded = load(path, backbone=backbone)
    assert loaded.config == detector.config
    torch.testing.assert_close(loaded(images, ["screw"] * 3).maps, detector(images, ["screw"] * 3).maps)


# ---- AnomalyCLIP prompts + AA-CLIP image adapters -----------------------------------------------
def test_prompt_adapters_score_adapted_features_against_anomalyclip_prompts(backbone, images):
    torch.manual_seed(3)
    prompts = AnomalyCLIP(backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2))
    hybrid = PromptAdapterDetector(backbone, PromptAdapterConfig(n_ctx=4, depth=3, t_n_ctx=2, domain="industrial"))
    hybrid.load_prompts(prompts)
    hybrid.eval()
    with torch.no_grad():
        text = prompts.prompt_learner(backbone)[0]  # (2, E): normal, abnormal
        anchors = text.T.expand(3, -1, -1)
        patches, detection = ref_image_features(hybrid, images)
    torch.testing.assert_close(hybrid.anchors_for(["anything", "else", "at all"], 3), anchors)
    prediction = hybrid(images)
    scores = ((detection[:, None] @ anchors)[:, 0, 1] + 1) / 2
    torch.testing.assert_close(prediction.scores, scores, atol=1e-5, rtol=1e-5)
    maps = torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE)
    for features in patches:
        logits = 100.0 * torch.matmul(features, anchors)
        side = int(math.isqrt(features.shape[1]))
        grid = ((logits[..., 1] + 1 - logits[..., 0]) / 2).reshape(3, side, side)
        blurred = torch.from_numpy(np.stack([ref_blur(g, 7, 1.0) for g in grid.double().numpy()]))
        maps += F.interpolate(blurred.float()[:, None], size=IMAGE_SIZE, mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(prediction.maps, maps, atol=2e-3, rtol=1e-4)
    assert set(k.split(".")[0] for k in hybrid.trainable_state_dict()) == {"image_adapter", "prompt_learner"}


def test_prompt_adapters_reject_mismatched_prompts(backbone):
    hybrid = PromptAdapterDetector(backbone, PromptAdapterConfig(n_ctx=4, depth=3, t_n_ctx=2))
    with pytest.raises(ValueError, match="n_ctx"):
        hybrid.load_prompts(AnomalyCLIP(backbone, AnomalyCLIPConfig(n_ctx=5, depth=3, t_n_ctx=2)))
    with pytest.raises(ValueError, match="object-agnostic"):
        hybrid.load_prompts(AnomalyCLIP(backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2,
                                                                   object_classes=("bottle",))))
