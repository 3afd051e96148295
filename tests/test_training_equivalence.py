"""Training steps of both methods against an independent reference of the official training code.

The references below are written from the facts in FIDELITY.md with open_clip's own modules
(token embedding, each block's own ``forward``, layer norms, projections), attention and losses
spelled out, and ``torch.optim.Adam``; nothing of anomaly_clip's forward or loss code is used.
They compute the two official rules this project once missed: AnomalyCLIP casts its deep text
tokens to float16 *after* expanding them to the two prompts (backward then rounds each prompt's
gradient to float16 on its own), and AA-CLIP resizes the position embedding bicubically *with
antialiasing*.

The library is driven through its real training entry points with one fixed batch that forms the
whole dataset, so epoch k is optimiser step k: the losses of each step come from the training
history, the parameters after each step from the ``epoch_k`` checkpoints.

Tolerance: the reference's own float noise. Each reference runs on the batch in four sample orders
(sums then round differently). The library (which also sees the batch in another order, and uses
fused kernels) may differ from the first run by at most ``NOISE_FACTOR`` times the largest
difference between the reference runs (per loss term; over all trained tensors for parameters),
plus ``ULPS`` float32 units of the value's magnitude where the runs happen to agree exactly.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from anomaly_clip.clip.backbone import load_backbone, resize_position_embedding
from anomaly_clip.engine.checkpoint import read_checkpoint
from anomaly_clip.methods.aaclip import AAClipConfig, AAClipDetector
from anomaly_clip.methods.aaclip.config import AAClipTraining
from anomaly_clip.methods.aaclip.training import train_image_stage, train_text_stage
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.methods.anomalyclip.config import AnomalyCLIPTraining
from anomaly_clip.methods.anomalyclip.training import train as train_anomalyclip

from conftest import train_config

NOISE_FACTOR = 8.0
ULPS = 8
STEPS = 3
EPS32 = torch.finfo(torch.float32).eps

State = Dict[str, torch.Tensor]
Record = Tuple[List[Dict[str, float]], List[State]]  # per step: loss terms, parameters after the step


# ---- data: one fixed batch is the whole dataset -------------------------------------------------
class OneBatch(Dataset):
    """Items in the loaders' format: even items normal, odd items anomalous with a drawn square."""

    def __init__(self, count: int, size: int, names: Sequence[str] = ("part",), seed: int = 7):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(count, 3, size, size, generator=generator)
        self.masks = torch.zeros(count, 1, size, size)
        self.labels = torch.tensor([i % 2 for i in range(count)])
        for i in range(1, count, 2):
            top, left = (5 * i) % (size // 2), (3 * i) % (size // 2)
            self.masks[i, :, top:top + size // 3, left:left + size // 4] = 1
            self.images[i, :, top:top + size // 3, left:left + size // 4] += 1.5
        self.names = [names[(i // 2) % len(names)] for i in range(count)]
        self.samples: list = []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return {"image": self.images[index], "mask": self.masks[index], "label": self.labels[index],
                "class_name": self.names[index], "path": f"image_{index}.png", "index": index}

    def batch(self, order: Sequence[int]):
        order = list(order)
        return (self.images[order], (self.masks[order, 0] > 0.5).float(), self.labels[order],
                [self.names[i] for i in order])


# ---- reference building blocks -------------------------------------------------------------------
def reference_embedding(visual, images: torch.Tensor, mode: str, antialias: bool) -> torch.Tensor:
    """Patch embedding, class token and position embedding resized as the official code does
    (``F.interpolate`` on the grid, class row kept), then ``ln_pre``: (B, 1 + N, W)."""
    x = visual.conv1(images)
    batch, width, height, breadth = x.shape
    x = x.reshape(batch, width, height * breadth).permute(0, 2, 1)
    position = visual.positional_embedding
    side = int(round((position.shape[0] - 1) ** 0.5))
    if (side, side) != (height, breadth):
        grid = position[1:].reshape(1, side, side, width).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(height, breadth), mode=mode, align_corners=False, antialias=antialias)
        position = torch.cat([position[:1], grid.permute(0, 2, 3, 1).reshape(height * breadth, width)])
    x = torch.cat([visual.class_embedding.expand(batch, 1, width), x], dim=1) + position
    return visual.ln_pre(x)


def reference_attention(block, normed: torch.Tensor, kind: str, across: str = "tokens") -> torch.Tensor:
    """Explicit multi-head self-attention of ``block``'s weights on (B, N, W) input: ``qk`` is
    CLIP's, ``vv`` uses the values as queries and keys; ``across="batch"`` attends among the
    images at each token position (AA-CLIP's stage-1 extractor sees sequence-first tensors)."""
    attention = block.attn
    batch, length, width = normed.shape
    heads = attention.num_heads
    q, k, v = F.linear(normed, attention.in_proj_weight, attention.in_proj_bias).split(width, dim=-1)
    split = (lambda t: t.reshape(batch, length, heads, width // heads))
    q, k, v = split(q), split(k), split(v)
    query, key = (q, k) if kind == "qk" else (v, v)
    scale = (width // heads) ** -0.5
    if across == "batch":
        weights = (torch.einsum("bnhd,cnhd->nhbc", query, key) * scale).softmax(dim=-1)
        mixed = torch.einsum("nhbc,cnhd->bnhd", weights, v)
    else:
        weights = (torch.einsum("bnhd,bmhd->bhnm", query, key) * scale).softmax(dim=-1)
        mixed = torch.einsum("bhnm,bmhd->bnhd", weights, v)
    return block.ls_1(attention.out_proj(mixed.reshape(batch, length, width)))


def reference_focal(probabilities: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0,
                    smooth: float = 1e-5) -> torch.Tensor:
    target = torch.stack([1 - mask, mask], dim=1).clamp(smooth, 1 - smooth)
    true_probability = (target * probabilities).sum(dim=1) + smooth
    return (-(1 - true_probability) ** gamma * true_probability.log()).mean()


def reference_dice(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    scores = [(2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(prediction, target)]
    return 1 - torch.stack(scores).mean()


def reference_segmentation(probabilities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Focal + Dice(abnormal, mask) + Dice(normal, 1 - mask) on (B, 2, H, W) probabilities."""
    return (reference_focal(probabilities, mask) + reference_dice(probabilities[:, 1], mask)
            + reference_dice(probabilities[:, 0], 1 - mask))


def run_reference(parameters: State, loss_terms: Callable[[State], Dict[str, torch.Tensor]], lr: float,
                  steps: int = STEPS) -> Record:
    """``steps`` Adam steps (betas 0.5/0.999, as both official scripts) on ``loss_terms()["loss"]``."""
    leaves = {name: value.clone().requires_grad_(True) for name, value in parameters.items()}
    optimizer = torch.optim.Adam(leaves.values(), lr=lr, betas=(0.5, 0.999))
    losses, states = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        terms = loss_terms(leaves)
        terms["loss"].backward()
        optimizer.step()
        losses.append({name: float(value.detach()) for name, value in terms.items()})
        states.append({name: value.detach().clone() for name, value in leaves.items()})
    return losses, states


def library_record(history: List[Dict[str, float]], folder, stage: str, names: Sequence[str],
                   rename: Dict[str, str]) -> Record:
    prefix = f"{stage}_" if stage else ""
    states = []
    for step in range(1, len(history) + 1):
        saved = read_checkpoint(folder / f"{prefix}epoch_{step}.pth")["state_dict"]
        states.append({name: saved[name] for name in names})
    losses = [{rename.get(k, k): v for k, v in entry.items() if k != "epoch"} for entry in history]
    return losses, states


def assert_within_reference_noise(ours: Record, references: Sequence[Record]) -> None:
    """Every loss term and parameter of every step of ``ours`` within the noise of ``references``
    (the same official computation on the batch in several sample orders; the first is compared).

    The noise of a step is the largest difference between the reference runs over all trained
    tensors: every parameter is stepped by the same Adam at the same learning rate, so one float
    deviation anywhere shows what the official step is defined to. (Deep tokens' gradients are
    rounded to float16, so their own per-tensor noise is often exactly 0 for one pair of orders
    and 2^-11 of a gradient for another.)
    """
    first, others = references[0], references[1:]
    for step, mine in enumerate(ours[0]):
        for name, value in first[0][step].items():
            noise = max(abs(value - other[0][step][name]) for other in others)
            allowed = NOISE_FACTOR * noise + ULPS * EPS32 * abs(value)
            assert abs(mine[name] - value) <= allowed, (
                f"step {step + 1} loss {name}: ours {mine[name]!r}, reference {value!r} (noise {noise:.3g})")
    for step, mine in enumerate(ours[1]):
        reference = first[1][step]
        noise = max(float((value - other[1][step][name]).abs().max())
                    for other in others for name, value in reference.items())
        for name, value in reference.items():
            allowed = NOISE_FACTOR * noise + ULPS * EPS32 * float(value.abs().max())
            error = float((mine[name] - value).abs().max())
            assert error <= allowed, (f"step {step + 1} {name}: max difference {error:.3g} from the reference, "
                                      f"allowed {allowed:.3g} (reference noise {noise:.3g})")


ORDERS = ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1])


# ---- AnomalyCLIP ---------------------------------------------------------------------------------
def official_prompt_features(clip, state: State, n_ctx: int, depth: int, t_n_ctx: int) -> torch.Tensor:
    """(2, E) unit text features of the normal and abnormal object-agnostic prompts. Deep tokens
    are expanded to both prompts, cast to float16, and concatenated with the float32 hidden states
    (type promotion), exactly as the official text forward does."""
    sentences = [" ".join(["X"] * n_ctx) + " object.", " ".join(["X"] * n_ctx) + " damaged object."]
    tokens = open_clip.tokenize(sentences)
    embedded = clip.token_embedding(tokens)
    context = torch.cat([state["prompt_learner.ctx_pos"][0], state["prompt_learner.ctx_neg"][0]])
    x = torch.cat([embedded[:, :1], context, embedded[:, 1 + n_ctx:]], dim=1) + clip.positional_embedding
    for index, block in enumerate(clip.transformer.resblocks):
        if 1 <= index < depth:
            deep = state[f"prompt_learner.compound_prompts_text.{index - 1}"].expand(x.shape[0], -1, -1).half()
            x = torch.cat([x[:, :1], deep, x[:, 1 + t_n_ctx:]], dim=1)
        x = block(x, attn_mask=clip.attn_mask)
    pooled = clip.ln_final(x)[torch.arange(2), tokens.argmax(dim=-1)] @ clip.text_projection
    return pooled / pooled.norm(dim=-1, keepdim=True)


def official_dpam_features(backbone, images: torch.Tensor, layers: Sequence[int], dpam_layers: int = 20):
    """Global embedding (B, E), unnormalised, and projected V-V patch tokens per layer (B, 1 + N, E)
    of the official dual path: CLIP's own blocks run on; from the first DPAM block a side path adds
    V-V attention of ``ln_1(original hidden state)`` and skips the MLP."""
    visual = backbone.visual
    blocks = visual.transformer.resblocks
    first = len(blocks) - (dpam_layers - 1)
    x = reference_embedding(visual, images, "bilinear", antialias=False)
    side, tokens = None, {}
    for index, block in enumerate(blocks):
        if index >= first:
            side = x if side is None else side
            side = side + reference_attention(block, block.ln_1(x), "vv")
        x = block(x)
        if index + 1 in layers:
            tokens[index + 1] = side if side is not None else x
    return x[:, 0] @ visual.proj, {layer: visual.ln_post(t) @ visual.proj for layer, t in tokens.items()}


def official_glocal_loss(backbone, state: State, batch, layers: Sequence[int], config: AnomalyCLIPConfig):
    images, masks, labels, _ = batch
    text = official_prompt_features(backbone.clip, state, config.n_ctx, config.depth, config.t_n_ctx)
    with torch.no_grad():
        global_embedding, patches = official_dpam_features(backbone, images, layers)
    global_embedding = global_embedding / global_embedding.norm(dim=-1, keepdim=True)
    image_loss = F.cross_entropy(global_embedding @ text.T / 0.07, labels)
    size = images.shape[-1]
    seg = 0.0
    for layer in layers:
        tokens = patches[layer] / patches[layer].norm(dim=-1, keepdim=True)
        probabilities = (tokens @ text.T / 0.07).softmax(dim=-1)[:, 1:]
        side = int(round(probabilities.shape[1] ** 0.5))
        grid = probabilities.reshape(-1, side, side, 2).permute(0, 3, 1, 2)
        seg = seg + reference_segmentation(F.interpolate(grid, size=(size, size), mode="bilinear"), masks)
    seg_loss = config.seg_loss_weight * seg
    return {"image_loss": image_loss, "seg_loss": seg_loss, "loss": image_loss + seg_loss}


@pytest.mark.parametrize("layers", [(24,), (6, 12, 18, 24)], ids=["layer24", "layers6-12-18-24"])
def test_anomalyclip_training_steps_equal_the_official_steps(tiny_backbone, tmp_path, layers):
    data = OneBatch(count=4, size=tiny_backbone.config.image_size)
    config = AnomalyCLIPConfig(features_list=layers)
    torch.manual_seed(11)
    detector = AnomalyCLIP(tiny_backbone, config)
    names = [n for n, p in detector.named_parameters() if p.requires_grad and "projections" not in n]
    start = {name: value.detach().clone() for name, value in detector.trainable_state_dict().items() if name in names}
    settings = AnomalyCLIPTraining(epoch=STEPS, batch_size=len(data), feature_cache="off")
    run = train_config(tmp_path, settings, seed=3, precision="fp32", export_official=False)
    history = train_anomalyclip(detector, data, run).stages[""].history
    ours = library_record(history, tmp_path, "", names, {})
    references = [run_reference(start, lambda state, order=order: official_glocal_loss(
        tiny_backbone, state, data.batch(order), layers, config), lr=1e-3)
        for order in ORDERS]
    assert_within_reference_noise(ours, references)
    moved = float((ours[1][-1]["prompt_learner.compound_prompts_text.0"]
                   - start["prompt_learner.compound_prompts_text.0"]).abs().max())
    assert moved > 1e-4  # the deep tokens did train


def test_deep_token_gradient_is_rounded_per_prompt(tiny_backbone):
    """Backward through the deep-token insertion gives fp16(g_normal) + fp16(g_abnormal) (official:
    cast after expanding to the prompts), not fp16(g_normal + g_abnormal) (cast, then expand)."""
    torch.manual_seed(11)
    learner = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig()).prompt_learner
    width, count = tiny_backbone.text_width, learner.t_n_ctx
    hidden = torch.randn(2, 3 + count, width)
    upstream = torch.randn(2, 3 + count, width) * 1e-3
    (learner._insert_deep_tokens(1, hidden) * upstream).sum().backward()
    per_prompt = upstream[:, 1:1 + count].half().float().sum(dim=0)
    rounded_sum = upstream[:, 1:1 + count].sum(dim=0).half().float()
    assert not torch.equal(per_prompt, rounded_sum)  # the two rules differ on this input
    assert torch.equal(learner.compound_prompts_text[0].grad, per_prompt)
    assert all(p.grad is None for p in learner.compound_prompts_text[1:])


# ---- AA-CLIP -------------------------------------------------------------------------------------
AACLIP_SIZE = 112
DESCRIPTIONS = {"bottle": "dark bottle", "screw": "screw"}
NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")


@pytest.fixture(scope="module")
def aaclip_backbone():
    """AA-CLIP's own backbone settings (exact GELU, antialiased bicubic resize), 4 x 4 -> 8 x 8 grid."""
    torch.manual_seed(0)
    config = AAClipDetector.default_backbone_config()
    return load_backbone(config, device="cpu", model_name="anomaly-clip-tiny", pretrained=None, random_init=True,
                         image_size=AACLIP_SIZE)


def fresh_aaclip(backbone) -> AAClipDetector:
    torch.manual_seed(5)
    detector = AAClipDetector(backbone, AAClipConfig(dataset="MVTec"))
    with torch.no_grad():  # xavier weights are tiny at these widths: make the adapters matter
        for parameter in detector.parameters():
            if parameter.requires_grad:
                parameter.mul_(3)
    return detector


def reference_adapter(x: torch.Tensor, weight: torch.Tensor, blend: float = 0.1) -> torch.Tensor:
    adapted = F.leaky_relu(x @ weight.T)
    adapted = adapted * x.norm(dim=-1, keepdim=True) / adapted.norm(dim=-1, keepdim=True)
    return blend * adapted + (1 - blend) * x


def reference_anchors(clip, state: State, description: str) -> torch.Tensor:
    """(E, 2) normal/abnormal anchors: 77-token sentences through the text tower with residual
    adapters after the first blocks and the LeakyReLU projection, unit-averaged per state group."""
    adapters = sorted(k for k in state if k.startswith("text_adapter.blocks.adapters."))
    anchors = []
    for states in (NORMAL_STATES, ABNORMAL_STATES):
        sentences = [t.format(s.format(description)) for s in states for t in TEMPLATES]
        tokens = open_clip.tokenize(sentences)
        x = clip.token_embedding(tokens) + clip.positional_embedding
        for index, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if index < len(adapters):
                x = reference_adapter(x, state[f"text_adapter.blocks.adapters.{index}.linear.weight"])
        pooled = clip.ln_final(x)[torch.arange(len(sentences)), tokens.argmax(dim=-1)]
        features = F.leaky_relu(pooled @ state["text_adapter.projection.linear.weight"].T)
        mean = (features / features.norm(dim=-1, keepdim=True)).mean(dim=0)
        anchors.append(mean / mean.norm())
    return torch.stack(anchors, dim=1)


def reference_stage1_features(backbone, images: torch.Tensor, level: int = 24, dpam_layers: int = 20):
    """The frozen V-V CLIP of stage 1 (last blocks V-V over the batch axis, MLP kept) at ``level``:
    unit projected patch tokens plus the unit global embedding of plain CLIP, (B, N, E)."""
    visual = backbone.visual
    blocks = visual.transformer.resblocks
    first = len(blocks) - (dpam_layers - 1)
    plain = reference_embedding(visual, images, "bicubic", antialias=True)
    surgery = None
    for index, block in enumerate(blocks):
        if index >= first:
            surgery = plain if surgery is None else surgery
            surgery = surgery + reference_attention(block, block.ln_1(surgery), "vv", across="batch")
            surgery = surgery + block.ls_2(block.mlp(block.ln_2(surgery)))
        plain = block(plain)
        if index + 1 == level:
            break
    global_embedding = visual.ln_post(plain[:, 0]) @ visual.proj
    patches = visual.ln_post(surgery[:, 1:]) @ visual.proj
    return (patches / patches.norm(dim=-1, keepdim=True)
            + (global_embedding / global_embedding.norm(dim=-1, keepdim=True))[:, None])


def reference_probabilities(features: torch.Tensor, anchors: torch.Tensor, size: int) -> torch.Tensor:
    side = int(round(features.shape[1] ** 0.5))
    logits = (100.0 * features @ anchors).permute(0, 2, 1).reshape(features.shape[0], 2, side, side)
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=True).softmax(dim=1)


def official_text_stage_loss(backbone, state: State, batch, weight: float):
    images, masks, _, names = batch
    with torch.no_grad():
        features = reference_stage1_features(backbone, images)
    by_class = {name: reference_anchors(backbone.clip, state, DESCRIPTIONS[name]) for name in dict.fromkeys(names)}
    anchors = torch.stack([by_class[name] for name in names])
    segmentation = reference_segmentation(reference_probabilities(features, anchors, images.shape[-1]), masks)
    disentangle = (anchors[:, :, 0] * anchors[:, :, 1]).sum(dim=1).mean() ** 2
    return {"segmentation": segmentation, "disentangle": disentangle, "loss": segmentation + weight * disentangle}


def reference_adapted_image(backbone, state: State, images: torch.Tensor, levels=(6, 12, 18, 24)):
    """Unit patch features per level (B, N, E) and the detection feature (B, E) of the adapted image tower."""
    visual = backbone.visual
    count = len([k for k in state if k.startswith("image_adapter.blocks.adapters.")])
    x = reference_embedding(visual, images, "bicubic", antialias=True)
    tokens = []
    for index, block in enumerate(visual.transformer.resblocks):
        x = block(x)
        if index < count:
            x = reference_adapter(x, state[f"image_adapter.blocks.adapters.{index}.linear.weight"])
        if index + 1 in levels:
            tokens.append(visual.ln_post(x[:, 1:]))
    patches = [F.normalize(t @ state[f"image_adapter.level_projections.{i}.linear.weight"].T, dim=-1)
               for i, t in enumerate(tokens)]
    detection = F.normalize(tokens[-1] @ state["image_adapter.detection_projection.linear.weight"].T, dim=-1)
    return patches, detection.mean(dim=1)


def official_image_stage_loss(backbone, state: State, batch, text_state: State):
    images, masks, labels, names = batch
    with torch.no_grad():
        anchors = torch.stack([reference_anchors(backbone.clip, text_state, DESCRIPTIONS[n]) for n in names])
    patches, detection = reference_adapted_image(backbone, state, images)
    classification = F.cross_entropy((detection[:, None] @ anchors)[:, 0], labels)
    segmentation = sum(reference_segmentation(reference_probabilities(p, anchors, images.shape[-1]), masks)
                       for p in patches)
    return {"classification": classification, "segmentation": segmentation, "loss": classification + segmentation}


def _stage_settings(**changes) -> AAClipTraining:
    values = dict(text_epoch=STEPS, image_epoch=STEPS, text_batch_size=4, image_batch_size=4, text_lr=1e-3,
                  image_lr=1e-3)
    values.update(changes)
    return AAClipTraining(**values)


def _run(path):
    return train_config(path, seed=3, precision="fp32", export_official=False)


def test_aaclip_text_stage_steps_equal_the_official_steps(aaclip_backbone, tmp_path):
    data = OneBatch(count=4, size=AACLIP_SIZE, names=("bottle", "screw"))
    detector = fresh_aaclip(aaclip_backbone)
    names = [n for n, _ in detector.text_adapter.named_parameters(prefix="text_adapter")]
    start = {name: value.detach().clone() for name, value in detector.trainable_state_dict().items() if name in names}
    settings = _stage_settings()
    history = train_text_stage(detector, data, _run(tmp_path), settings).history
    ours = library_record(history, tmp_path, "text", names, {})
    references = [run_reference(start, lambda state, order=order: official_text_stage_loss(
        aaclip_backbone, state, data.batch(order), settings.disentangle_weight), lr=settings.text_lr)
        for order in ORDERS]
    assert_within_reference_noise(ours, references)


def test_aaclip_image_stage_steps_equal_the_official_steps(aaclip_backbone, tmp_path):
    data = OneBatch(count=4, size=AACLIP_SIZE, names=("bottle", "screw"))
    detector = fresh_aaclip(aaclip_backbone)
    state = {name: value.detach().clone() for name, value in detector.trainable_state_dict().items()}
    names = [n for n, _ in detector.image_adapter.named_parameters(prefix="image_adapter")]
    start = {name: state[name] for name in names}
    text_state = {name: value for name, value in state.items() if name.startswith("text_adapter.")}
    settings = _stage_settings()
    history = train_image_stage(detector, data, _run(tmp_path), settings).history
    ours = library_record(history, tmp_path, "image", names, {})
    references = [run_reference(start, lambda state, order=order: official_image_stage_loss(
        aaclip_backbone, state, data.batch(order), text_state), lr=settings.image_lr)
        for order in ORDERS]
    assert_within_reference_noise(ours, references)


def reference_blur(grid: torch.Tensor, kernel_size: int = 7, sigma: float = 1.0) -> torch.Tensor:
    """Separable Gaussian of (B, h, w) grids with mirror padding, in float64, written out per axis."""
    radius = kernel_size // 2
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    padded = F.pad(grid.double()[:, None], (radius, radius, radius, radius), mode="reflect")[:, 0]
    height, width = grid.shape[-2:]
    rows = sum(kernel[i] * padded[:, :, i:i + width] for i in range(kernel_size))
    return sum(kernel[i] * rows[:, i:i + height, :] for i in range(kernel_size))


def test_aaclip_inference_maps_equal_the_official_maps(aaclip_backbone):
    """Scores and maps with the official antialiased resize, blur on the grid, corner-aligned upsampling."""
    data = OneBatch(count=3, size=AACLIP_SIZE, names=("bottle", "screw"))
    detector = fresh_aaclip(aaclip_backbone).eval()
    state = {name: value.detach() for name, value in detector.trainable_state_dict().items()}
    images, _, _, names = data.batch([0, 1, 2])
    prediction = detector(images, names)
    with torch.no_grad():
        patches, detection = reference_adapted_image(aaclip_backbone, state, images)
        anchors = torch.stack([reference_anchors(aaclip_backbone.clip, state, DESCRIPTIONS[n]) for n in names])
        scores = ((detection[:, None] @ anchors)[:, 0, 1] + 1) / 2
        maps = torch.zeros(3, AACLIP_SIZE, AACLIP_SIZE, dtype=torch.float64)
        for features in patches:
            logits = 100.0 * features @ anchors
            side = int(round(features.shape[1] ** 0.5))
            grid = reference_blur(((logits[..., 1] + 1 - logits[..., 0]) / 2).reshape(3, side, side))
            maps += F.interpolate(grid[:, None], size=AACLIP_SIZE, mode="bilinear", align_corners=True)[:, 0]
    torch.testing.assert_close(prediction.scores, scores, atol=1e-6, rtol=1e-6)
    # maps sum four levels of 100 x cosine differences (magnitude ~10-100 here): float32 noise of
    # such sums is ~1e-5 absolute; 1e-4 is the bar the official comparison is held to
    torch.testing.assert_close(prediction.maps.double(), maps, atol=1e-4, rtol=0)


def test_antialiased_resize_is_recorded_and_old_checkpoints_keep_theirs(aaclip_backbone):
    images = torch.randn(2, 3, AACLIP_SIZE, AACLIP_SIZE)
    visual = aaclip_backbone.visual
    assert aaclip_backbone.config.pos_embed_interpolation == "bicubic_antialias"
    assert aaclip_backbone.config.to_dict()["pos_embed_interpolation"] == "bicubic_antialias"
    with torch.no_grad():
        torch.testing.assert_close(aaclip_backbone.embed_image(images),
                                   reference_embedding(visual, images, "bicubic", antialias=True))
        plain = reference_embedding(visual, images, "bicubic", antialias=False)
        assert not torch.allclose(plain, reference_embedding(visual, images, "bicubic", antialias=True), atol=1e-4)
        # a checkpoint written before the rule records plain "bicubic" and reproduces it
        resized = resize_position_embedding(visual.positional_embedding, (8, 8), "bicubic")
        grid = visual.positional_embedding[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        expected = F.interpolate(grid, size=(8, 8), mode="bicubic", align_corners=False)
        torch.testing.assert_close(resized[1:], expected.permute(0, 2, 3, 1).reshape(64, -1))
    with pytest.raises(ValueError, match="bicubic_antialias"):
        resize_position_embedding(visual.positional_embedding, (8, 8), "nearest")


def test_training_and_protocols_default_to_float32():
    """The official runs train in float32: train.py and every protocol config default to it;
    mixed precision is an explicit option."""
    import yaml

    from anomaly_clip.cli.train import build_train_parser
    from anomaly_clip.engine.config import TrainConfig
    from anomaly_clip.resources import configs_dir

    assert TrainConfig().precision == "fp32"
    for method in ("anomalyclip", "aaclip"):
        args = build_train_parser().parse(["--method", method, "--train_data_path", "unused"])
        assert args.precision == "fp32"
    protocols = sorted(configs_dir().glob("anomalyclip/*.yaml")) + sorted(configs_dir().glob("aaclip/*.yaml"))
    protocols.append(configs_dir() / "tn3k" / "anomalyclip_finetune.yaml")
    assert len(protocols) >= 7
    for path in protocols:
        content = yaml.safe_load(path.read_text())
        assert content["train"]["precision"] == "fp32", path
        assert content["test"]["precision"] == "fp32", path
