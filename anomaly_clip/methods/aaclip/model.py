"""AA-CLIP: anomaly-aware CLIP through two-stage residual adaptation (CVPR 2025).

Stage 1 adapts the text tower so that each class's normal and abnormal anchors separate: the
anchors segment patch features of a frozen V-V CLIP, and a disentangle term pushes the two
anchors towards orthogonality. Stage 2 freezes those anchors and adapts the image tower so that
its patch and image features align with them. Inference compares adapted patch features with
the class's anchors at four depths and blurs the low-resolution maps before upsampling.

Defaults follow the official code (see the method's documentation page for where it differs
from the paper and which options give the paper's variant).
"""
from __future__ import annotations

import math
import logging
import re
from abc import abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...clip.backbone import CLIPBackbone
from ...clip.blocks import block_attention, mlp_residual, run_block
from ...clip.dpam import DPAMConfig, encode_image
from ...data.registry import UnknownDatasetError, get_dataset_info
from ...engine.detector import AnomalyDetector, PatchFeatures, Prediction
from ...engine.losses import classification_loss, segmentation_loss
from ...engine.precision import float32_einsum
from ...engine.smoothing import gaussian_blur
from . import official
from .adapters import ImageAdapter, TextAdapter
from .class_prompts import GENERIC_CLASS, PromptEnsemble, class_text_anchors, describe_class
from .config import DEFAULT_DOMAIN, DOMAIN_BLUR, TEXT_LOSS_LEVELS, VV_AXES, AAClipConfig, AdaptedImageConfig

logger = logging.getLogger(__name__)

SIMILARITY_SCALE = 100.0


def dataset_domain(dataset: Optional[str]) -> Optional[str]:
    """Domain ("industrial"/"medical") of a registered dataset, None when unknown."""
    if not dataset:
        return None
    try:
        return get_dataset_info(dataset).domain
    except UnknownDatasetError:
        return None


def anchor_products(features: torch.Tensor, anchors: torch.Tensor, equation: str) -> torch.Tensor:
    """``einsum`` of features with anchors in float32 even under autocast: similarities are scaled
    by 100 before softmax and map arithmetic, where half precision would lose the signal."""
    return float32_einsum(equation, features, anchors)


def similarity_logits(patch_features: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``100 * cos`` of (B, N, E) unit patch features with (B, E, 2) anchors, as (B, 2, h, w)."""
    batch, patches, _ = patch_features.shape
    side = math.isqrt(int(patches))
    if side * side != patches:
        raise ValueError(f"{patches} patch features do not form a square grid")
    logits = SIMILARITY_SCALE * anchor_products(patch_features, anchors, "bne,bek->bkn")
    return logits.reshape(batch, anchors.shape[-1], side, side)


def segmentation_probabilities(patch_features: torch.Tensor, anchors: torch.Tensor, size: int) -> torch.Tensor:
    """Training-time maps: logits upsampled (bilinear, corners aligned) to ``size``, softmax over
    (normal, abnormal): (B, 2, size, size)."""
    logits = F.interpolate(similarity_logits(patch_features, anchors), size=(size, size), mode="bilinear",
                           align_corners=True)
    return logits.softmax(dim=1)


def anomaly_maps(patch_features: Sequence[torch.Tensor], anchors: torch.Tensor, size: int,
                 kernel_size: int, sigma: float) -> torch.Tensor:
    """Inference maps (B, size, size): per level ``(100 cos_a + 1 - 100 cos_n) / 2`` on the patch
    grid, Gaussian-blurred there, upsampled (bilinear, corners aligned), summed over levels."""
    levels = torch.stack([similarity_logits(features, anchors) for features in patch_features])
    return level_maps_to_image((levels[:, :, 1] + 1 - levels[:, :, 0]) / 2, size, kernel_size, sigma)


def level_maps_to_image(grid: torch.Tensor, size: int, kernel_size: int, sigma: float) -> torch.Tensor:
    """(L, B, h, w) per-level patch-grid maps -> (B, size, size): Gaussian-blurred on the grid,
    upsampled (bilinear, corners aligned) and summed over levels."""
    grid = gaussian_blur(grid.float(), kernel_size, sigma)
    count, batch, side, _ = grid.shape
    upsampled = F.interpolate(grid.reshape(count * batch, 1, side, side), size=(size, size), mode="bilinear",
                              align_corners=True)
    return upsampled.reshape(count, batch, size, size).sum(dim=0)


def detection_scores(detection: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Image score ``(det . t_abnormal + 1) / 2`` of (B, E) detection features."""
    return (anchor_products(detection, anchors[..., 1], "be,be->b") + 1) / 2


def disentangle_loss(anchors: torch.Tensor) -> torch.Tensor:
    """Square of the batch-mean inner product of each sample's (normal, abnormal) anchors (B, E, 2):
    zero when the two anchors are orthogonal on average."""
    return (anchors[..., 0] * anchors[..., 1]).sum(dim=1).mean().pow(2)


def _rescale(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The official evaluation's rescaling to [0, 1] by min and max, skipped when the max is already 1."""
    if bool(high == 1):
        return values
    return (values - low) / (high - low).clamp_min(torch.finfo(values.dtype).tiny)


def fuse_scores(scores: torch.Tensor, map_peaks: torch.Tensor, score_range: Tuple[torch.Tensor, torch.Tensor],
                map_range: Tuple[torch.Tensor, torch.Tensor], domain: str) -> torch.Tensor:
    """``0.5 * rescaled max(map) + 0.5 * rescaled score`` (industrial) or the rescaled ``max(map)``
    (medical), each rescaled to [0, 1] by its (low, high) range."""
    if domain not in DOMAIN_BLUR:
        raise ValueError(f"domain must be one of {sorted(DOMAIN_BLUR)}, got {domain!r}")
    map_max = _rescale(map_peaks.double(), *(torch.as_tensor(v, dtype=torch.float64) for v in map_range))
    if domain == "medical":
        return map_max.to(scores.dtype)
    low, high = (torch.as_tensor(v, dtype=torch.float64) for v in score_range)
    return (0.5 * map_max + 0.5 * _rescale(scores.double(), low, high)).to(scores.dtype)


def fuse_class_scores(scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                      domain: str) -> torch.Tensor:
    """Image scores of one class as the official evaluation computes them.

    Scores and maps are min-max rescaled over the whole class, then fused (:func:`fuse_scores`).
    Only each map's maximum (``map_peaks``) and minimum (``map_floors``) are needed, so no map is
    kept for this.
    """
    if not scores.numel() == map_peaks.numel() == map_floors.numel():
        raise ValueError(f"{scores.numel()} scores but {map_peaks.numel()} map peaks and "
                         f"{map_floors.numel()} map floors")
    return fuse_scores(scores, map_peaks, (scores.double().min(), scores.double().max()),
                       (map_floors.double().min(), map_peaks.double().max()), domain)


def _vv_block(block: torch.nn.Module, x: torch.Tensor, axis: str) -> torch.Tensor:
    """A block whose attention is V-V, MLP kept; ``axis="batch"`` attends across the images of
    the batch at each token position (what the official stage-1 extractor computes, because its
    replacement attention receives sequence-first tensors), ``"tokens"`` across an image's tokens."""
    normed = block.ln_1(x)
    if axis == "batch":
        (attended,) = block_attention(block, normed.transpose(0, 1), ("vv",))
        attended = attended.transpose(0, 1)
    else:
        (attended,) = block_attention(block, normed, ("vv",))
    return mlp_residual(block, x + attended)


def stage1_patch_features(backbone: CLIPBackbone, images: torch.Tensor, features_list: Sequence[int],
                          dpam_layers: int = 20, vv_axis: str = "batch") -> List[torch.Tensor]:
    """Frozen visual features that supervise the text stage, one (B, N, E) tensor per level.

    Patch tokens of a V-V CLIP (last ``dpam_layers - 1`` blocks single-path V-V) after
    ``ln_post`` and ``proj``, unit-normalised, plus the unit global embedding of plain CLIP.
    Both CLIPs share weights and the blocks before V-V, so the trunk runs once.
    """
    if vv_axis not in VV_AXES:
        raise ValueError(f"vv_axis must be one of {VV_AXES}, got {vv_axis!r}")
    blocks = backbone.visual.transformer.resblocks
    first = DPAMConfig(dpam_layers=dpam_layers, structure="single").first_block(len(blocks))
    wanted = set(int(level) for level in features_list)
    if not wanted or not all(1 <= level <= len(blocks) for level in wanted):
        raise ValueError(f"features_list {sorted(wanted)} outside 1..{len(blocks)}")
    plain = backbone.embed_image(images)
    tokens: Dict[int, torch.Tensor] = {}
    for index in range(first):
        plain = run_block(blocks[index], plain)
        if index + 1 in wanted:
            tokens[index + 1] = plain
    surgery = plain
    for index in range(first, len(blocks)):
        plain = run_block(blocks[index], plain)
        surgery = _vv_block(blocks[index], surgery, vv_axis)
        if index + 1 in wanted:
            tokens[index + 1] = surgery
    global_embedding = F.normalize(backbone.project_tokens(plain[:, 0]), dim=-1)
    return [F.normalize(backbone.project_tokens(tokens[level][:, 1:]), dim=-1) + global_embedding[:, None]
            for level in sorted(wanted)]


class AdaptedImageDetector(AnomalyDetector):
    """AA-CLIP's image side against normal/abnormal text anchors from any source.

    Subclasses provide :meth:`compute_anchors` (differentiable anchors of anchor keys) and
    :meth:`anchor_keys` (a batch's class names -> keys). Fixed anchors live in the buffer
    :attr:`anchor_bank` (one row per key seen so far, computed on first use); it is emptied by
    :meth:`text_parts_changed` (after loading weights, after a text stage, on leaving training).
    """

    config_class = AdaptedImageConfig
    mask_interpolation = "nearest"

    def __init__(self, backbone: CLIPBackbone, config: AdaptedImageConfig):
        super().__init__(backbone, config)
        if config.features_list[-1] > backbone.num_visual_blocks:
            raise ValueError(f"features_list {config.features_list} exceed the {backbone.num_visual_blocks} "
                             "visual blocks")
        if config.image_adapt_until > backbone.num_visual_blocks:
            raise ValueError(f"image_adapt_until {config.image_adapt_until} exceeds the "
                             f"{backbone.num_visual_blocks} visual blocks")
        self.image_adapter = ImageAdapter(backbone.vision_width, backbone.embed_dim, config.features_list,
                                          config.image_adapt_until, config.image_adapt_weight,
                                          config.relu).to(backbone.device)
        self.register_buffer("anchor_bank", torch.empty(0, device=backbone.device), persistent=False)
        self.anchor_rows: Dict[str, int] = {}
        self._warned_uncalibrated = False

    # ---- anchors -----------------------------------------------------------------------------
    @abstractmethod
    def compute_anchors(self, keys: Sequence[str]) -> torch.Tensor:
        """(C, E, 2) normal/abnormal anchors of C anchor keys (differentiable)."""

    @abstractmethod
    def anchor_keys(self, class_names: Sequence[str]) -> List[str]:
        """The anchor key of each class name of a batch."""

    def class_key(self, class_name: Optional[str]) -> Optional[str]:
        """The anchor key (class description) of ``class_name``; the generic class for None."""
        return self.anchor_keys([class_name or GENERIC_CLASS])[0]

    def text_parts_changed(self) -> None:
        """Empty :attr:`anchor_bank`: the anchors are recomputed from the text side on next use."""
        self.anchor_bank = torch.empty(0, device=self.device)
        self.anchor_rows = {}

    def anchors_for(self, class_names: Optional[Sequence[str]], batch_size: int) -> torch.Tensor:
        """Fixed anchors (B, E, 2) for a batch's class names (``None``: the generic class), rows of
        :attr:`anchor_bank`; keys not in the bank yet are computed together and appended."""
        names = list(class_names) if class_names is not None else [GENERIC_CLASS] * batch_size
        if len(names) != batch_size:
            raise ValueError(f"got {len(names)} class names for {batch_size} images")
        keys = self.anchor_keys(names)
        missing = [k for k in dict.fromkeys(keys) if k not in self.anchor_rows]
        if missing:
            with torch.no_grad():
                anchors = self.compute_anchors(missing).float().to(self.device)
            logger.info("Text anchors computed for %s", ", ".join(repr(k) for k in missing))
            self.anchor_rows.update({k: len(self.anchor_rows) + i for i, k in enumerate(missing)})
            self.anchor_bank = anchors if self.anchor_bank.numel() == 0 else torch.cat([self.anchor_bank, anchors])
        if class_names is None:  # one generic pair broadcast (any batch size, also when traced)
            row = self.anchor_rows[keys[0]]
            return self.anchor_bank[row:row + 1].expand(batch_size, -1, -1)
        rows = torch.tensor([self.anchor_rows[k] for k in keys], device=self.anchor_bank.device)
        return self.anchor_bank[rows]

    # ---- image side ------------------------------------------------------------------------
    def encode_image_features(self, images: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Adapted unit patch features per level (B, N, E) and the (B, E) detection feature."""
        features = encode_image(self.backbone, images, self.config.features_list,
                                after_block=self.image_adapter.blocks.after_block)
        ln_post = self.backbone.visual.ln_post
        patches = [ln_post(features.layer_tokens[level][:, 1:]) for level in self.config.features_list]
        return self.image_adapter(patches)

    def blur_parameters(self) -> Tuple[int, float]:
        """(kernel, sigma) of the map blur: explicit settings, else the domain's defaults."""
        domain = self.domain
        kernel, sigma = DOMAIN_BLUR[domain]
        return self.config.blur_kernel or kernel, self.config.blur_sigma or sigma

    @property
    def domain(self) -> str:
        """Explicit domain, else the registered dataset's, else industrial."""
        domain = self.config.domain or dataset_domain(self.config.dataset)
        if domain not in DOMAIN_BLUR:
            if domain is not None:
                logger.warning("Unknown domain %r of dataset %r; using %s settings", domain, self.config.dataset,
                               DEFAULT_DOMAIN)
            return DEFAULT_DOMAIN
        return domain

    def forward_with_patch_features(self, images: torch.Tensor, class_names: Optional[Sequence[str]] = None
                                    ) -> Tuple[Prediction, PatchFeatures]:
        """Detection scores (B,) ``(det . t_abnormal + 1) / 2``, about [0, 1]; maps (B, S, S) summed
        over levels of the blurred ``(100 cos_abnormal + 1 - 100 cos_normal) / 2``: unbounded and
        often negative, on another scale than AnomalyCLIP's maps."""
        self.check_images(images, class_names)
        images = images.to(self.device)
        with torch.no_grad():
            patch_features, detection = self.encode_image_features(images)
            anchors = self.anchors_for(class_names, images.shape[0])
            kernel, sigma = self.blur_parameters()
            maps = anomaly_maps(patch_features, anchors, images.shape[-1], kernel, sigma)
            scores = detection_scores(detection, anchors)
        return Prediction(scores=scores.float(), maps=maps.float()), dict(zip(self.config.features_list, patch_features))

    def patch_features(self, images: torch.Tensor) -> PatchFeatures:
        with torch.no_grad():
            patch_features, _ = self.encode_image_features(images.to(self.device))
        return dict(zip(self.config.features_list, patch_features))

    def patch_maps(self, grid_maps: torch.Tensor, size: int) -> torch.Tensor:
        """Blur on the grid, upsample and sum over levels, as the text maps (:func:`anomaly_maps`)."""
        kernel, sigma = self.blur_parameters()
        return level_maps_to_image(grid_maps.transpose(0, 1), size, kernel, sigma)

    def class_image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                           map_floors: torch.Tensor) -> torch.Tensor:
        """Final image scores of one class: see ``AdaptedImageConfig.image_score``."""
        if self.config.image_score == "detection":
            return scores
        return fuse_class_scores(scores, map_peaks, map_floors, self.domain)

    def score_statistics(self, scores: torch.Tensor, map_peaks: torch.Tensor,
                         map_floors: torch.Tensor) -> Dict[str, float]:
        """The ranges of the fused score, measured on the calibration images (fixed afterwards)."""
        if self.config.image_score == "detection":
            return {}
        return {"score_low": float(scores.min()), "score_high": float(scores.max()),
                "map_low": float(map_floors.min()), "map_high": float(map_peaks.max())}

    def image_scores(self, scores: torch.Tensor, map_peaks: torch.Tensor, map_floors: torch.Tensor,
                     statistics: Optional[Mapping[str, float]] = None) -> torch.Tensor:
        """The fused score of the official evaluation with the calibration's fixed ranges in
        place of each class's min/max; without calibration statistics the detection score alone."""
        if self.config.image_score == "detection":
            return scores
        if not statistics:
            if not self._warned_uncalibrated:
                logger.warning("%s has no calibration statistics: per-image scores are detection scores; "
                               "run 'anomaly-clip calibrate' for the fused score", self.method_name)
                self._warned_uncalibrated = True
            return scores
        return fuse_scores(scores, map_peaks, (statistics["score_low"], statistics["score_high"]),
                           (statistics["map_low"], statistics["map_high"]), self.domain)

    # ---- training ----------------------------------------------------------------------------
    def image_stage_loss(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
                         class_names: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Stage 2: CE of ``det . anchors`` against labels plus the segmentation loss summed over
        levels, anchors fixed."""
        anchors = self.anchors_for(class_names, images.shape[0])
        patch_features, detection = self.encode_image_features(images)
        logits = anchor_products(detection, anchors, "be,bek->bk")
        classification = classification_loss(logits, labels)
        size = images.shape[-1]
        segmentation = sum(segmentation_loss(segmentation_probabilities(f, anchors, size), masks)
                           for f in patch_features)
        return {"loss": classification + segmentation, "classification": classification,
                "segmentation": segmentation}


class AAClipDetector(AdaptedImageDetector):
    """Frozen CLIP with AA-CLIP's text and image residual adapters."""

    config_class = AAClipConfig
    prompt_ensemble = PromptEnsemble()

    def __init__(self, backbone: CLIPBackbone, config: AAClipConfig):
        super().__init__(backbone, config)
        if config.text_adapt_until > backbone.num_text_blocks:
            raise ValueError(f"text_adapt_until {config.text_adapt_until} exceeds the "
                             f"{backbone.num_text_blocks} text blocks")
        self.text_adapter = TextAdapter(backbone.text_width, backbone.embed_dim, config.text_adapt_until,
                                        config.text_adapt_weight).to(backbone.device)

    # ---- text side -------------------------------------------------------------------------
    def describe(self, class_name: str) -> str:
        return describe_class(class_name, self.config.dataset, self.config.class_descriptions)

    def encode_sentences(self, sentences: Sequence[str]) -> torch.Tensor:
        """Text features (S, E) of sentences: adapted tower and projection, or plain CLIP.

        Sequences are cut after the longest end-of-text token; under causal attention the
        padding after it never reaches the pooled token, so the features are unchanged.
        """
        backbone = self.backbone
        token_ids = backbone.tokenize(sentences)
        eot = token_ids.argmax(dim=-1)
        token_ids = token_ids[:, : int(eot.max()) + 1]
        embeddings = backbone.embed_tokens(token_ids)
        if not self.config.adapt_text:
            return backbone.encode_text_embeddings(embeddings, eot)
        pooled = backbone.encode_text_embeddings(embeddings, eot, after_block=self.text_adapter.blocks.after_block,
                                                 project=False)
        return self.text_adapter.projection(pooled)

    def compute_anchors(self, descriptions: Sequence[str]) -> torch.Tensor:
        """(C, E, 2) normal/abnormal anchors of class descriptions (the anchor keys; differentiable)."""
        return class_text_anchors(self.encode_sentences, descriptions, self.prompt_ensemble)

    def anchor_keys(self, class_names: Sequence[str]) -> List[str]:
        return [self.describe(name) for name in class_names]

    # ---- training ----------------------------------------------------------------------------
    def text_stage_loss(self, images: torch.Tensor, masks: torch.Tensor, class_names: Sequence[str],
                        disentangle_weight: float = 0.1, dpam_layers: int = 20, vv_axis: str = "batch",
                        loss_levels: str = "last") -> Dict[str, torch.Tensor]:
        """Stage 1: segment frozen V-V CLIP patch features with the adapted anchors, plus
        ``weight * (mean over the batch of <t_normal, t_abnormal>)^2``."""
        if loss_levels not in TEXT_LOSS_LEVELS:
            raise ValueError(f"loss_levels must be one of {TEXT_LOSS_LEVELS}, got {loss_levels!r}")
        levels = self.config.features_list[-1:] if loss_levels == "last" else self.config.features_list
        with torch.no_grad():
            features = stage1_patch_features(self.backbone, images, levels, dpam_layers, vv_axis)
        descriptions = self.anchor_keys(class_names)
        unique = list(dict.fromkeys(descriptions))
        class_anchors = self.compute_anchors(unique)
        anchors = class_anchors[[unique.index(d) for d in descriptions]]
        size = images.shape[-1]
        segmentation = sum(segmentation_loss(segmentation_probabilities(f, anchors, size), masks) for f in features)
        disentangle = disentangle_loss(anchors)
        return {"loss": segmentation + disentangle_weight * disentangle, "segmentation": segmentation,
                "disentangle": disentangle}

    # ---- official checkpoints -------------------------------------------------------------
    @classmethod
    def read_official_checkpoint(cls, path: str, contents: Optional[Dict[str, Any]] = None
                                 ) -> Optional[Dict[str, Any]]:
        return official.read_checkpoint(path, contents)

    def load_official_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Load official adapter weights; the projection activation (``--relu``) is read from
        the file's keys, the adapter counts must match the configuration."""
        image_state = dict(checkpoint["image_adapter"])
        relu = any(re.fullmatch(r"seg_proj\.\d+\.fc\.0\.weight", key) for key in image_state)
        if relu != self.config.relu:
            logger.info("Reference image adapter was trained %s --relu; using that", "with" if relu else "without")
            self.config.relu = relu
            for projection in [*self.image_adapter.level_projections, self.image_adapter.detection_projection]:
                projection.activation = relu
        self.image_adapter.load_state_dict(official.image_state_from_official(image_state, self.config), strict=True)
        text_state = checkpoint.get("text_adapter")
        if text_state is None:
            logger.info("No official text adapter: anchors use plain CLIP text features")
            self.config.adapt_text = False
        else:
            self.text_adapter.load_state_dict(official.text_state_from_official(dict(text_state), self.config), strict=True)
            self.config.adapt_text = True
        self.text_parts_changed()

    def official_checkpoints(self, epoch: Optional[int] = None, stage: str = "") -> Dict[str, Dict[str, Any]]:
        """Official files of ``stage`` ("text", "image", or "" for both)."""
        files: Dict[str, Dict[str, Any]] = {}
        if stage in ("", "text") and self.config.adapt_text:
            files[official.TEXT_FILE] = {"epoch": epoch, "text_adapter": official.official_text_state(self.text_adapter)}
        if stage in ("", "image"):
            payload = {"epoch": epoch, "image_adapter": official.official_image_state(self.image_adapter, self.config.relu)}
            files[official.IMAGE_FILE] = payload
            if epoch is not None:
                files[f"image_adapter_{epoch}.pth"] = payload
        if stage not in ("", "text", "image"):
            raise ValueError(f"AA-CLIP stages are 'text' and 'image', got {stage!r}")
        return files
