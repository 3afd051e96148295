"""Frozen CLIP backbone: the open_clip ViT of a :class:`BackboneConfig` and batched encoders
(weights come from :mod:`.weights`).

Both methods only ever *read* CLIP: its weights are frozen, its blocks are re-run by our own
forward functions (``dpam.py`` for the image tower, :meth:`CLIPBackbone.encode_text_embeddings`
for the text tower) so that prompts, deep tokens, DPAM and adapters can be injected without
patching open_clip modules in place.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import run_block
from ..devices import resolve_device
from .config import (ACTIVATIONS, POS_EMBED_INTERPOLATIONS, RANDOM_WEIGHTS_WARNING,  # noqa: F401 - re-exported
                     BackboneConfig)
from .weights import InvalidWeightsError, WeightsError, WeightsNotFoundError, load_weights, locate_weights  # noqa: F401,E501

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


class _NoPretrainedNotice(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded" warning: we build every model without
    open_clip's weights and load ours ourselves (:func:`build_clip_model` says when they are random)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def build_clip_model(config: BackboneConfig) -> nn.Module:
    """Build the open_clip model of ``config`` and load its weights (never silently random: a
    random backbone is announced by one loud warning)."""
    if config.model_name not in open_clip.list_models():
        raise ValueError(f"Unknown open_clip model {config.model_name!r}; known: {open_clip.list_models()}")
    weights_file = locate_weights(config)
    notice = _NoPretrainedNotice()
    logging.getLogger().addFilter(notice)
    try:
        with torch.random.fork_rng(devices=[]):
            # seeded so that a random backbone, and any checkpoint trained on it, can be rebuilt exactly
            torch.manual_seed(config.random_seed)
            model = open_clip.create_model(config.model_name, pretrained=None,
                                           force_quick_gelu=config.activation == "quick_gelu")
    finally:
        logging.getLogger().removeFilter(notice)
    if weights_file is None:
        kind = "the TINY RANDOM backbone" if config.is_tiny else f"{config.model_name} with RANDOM weights"
        logger.warning("%s\n%s", "=" * 72, f"Running {kind} ({config.image_size} px): the pipeline is real, but "
                       f"every score, map and metric is MEANINGLESS. Load CLIP weights for real results.\n"
                       + "=" * 72)
        return model
    ignored = load_weights(model, weights_file)
    logger.info("Loaded %s weights from %s (%s activation)%s", config.model_name, weights_file,
                config.activation, f"; ignored keys {ignored}" if ignored else "")
    return model


def resize_position_embedding(pos_embed: torch.Tensor, grid: Tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a ViT position embedding (1 + n * n, W) to ``grid`` (class row kept): (1 + h * w, W).

    ``mode`` is one of :data:`POS_EMBED_INTERPOLATIONS`: ``F.interpolate`` with that mode,
    ``align_corners=False``, and ``antialias=True`` for ``"bicubic_antialias"`` (open_clip's
    ``resize_pos_embed``, which AA-CLIP's and VAND's code use; its kernel has a = -0.5 instead of
    -0.75, so it differs from plain bicubic even when upsampling 24 -> 37). The grid is resized in
    float32. Raises ValueError for a non-square grid or an unknown mode.
    """
    if mode not in POS_EMBED_INTERPOLATIONS:
        raise ValueError(f"position-embedding resize must be one of {POS_EMBED_INTERPOLATIONS}, got {mode!r}")
    class_row, patch_rows = pos_embed[:1], pos_embed[1:]
    side = int(round(patch_rows.shape[0] ** 0.5))
    if side * side != patch_rows.shape[0]:
        raise ValueError(f"position embedding of {patch_rows.shape[0]} patches is not a square grid")
    if (side, side) == tuple(grid):
        return pos_embed
    patches = patch_rows.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    antialias = mode.endswith("_antialias")
    patches = F.interpolate(patches, size=tuple(grid), mode=mode.removesuffix("_antialias"), align_corners=False,
                            antialias=antialias)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos_embed.dtype)
    return torch.cat([class_row, patches], dim=0)


class CLIPBackbone(nn.Module):
    """A frozen open_clip CLIP with batched encoders that accept injected tokens and hooks."""

    def __init__(self, clip_model: nn.Module, config: BackboneConfig):
        super().__init__()
        self.clip = clip_model
        self.config = config
        visual = clip_model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise ValueError(f"{config.model_name} has no ViT image tower; only open_clip ViTs are supported")
        self.clip.eval()
        for parameter in self.clip.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("resized_position_embedding", self._resized_position_embedding(), persistent=False)

    def train(self, mode: bool = True) -> "CLIPBackbone":
        """CLIP stays in eval mode: it is frozen and has no train-time behaviour we want."""
        super().train(mode)
        self.clip.eval()
        return self

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def patch_size(self) -> int:
        size = self.visual.patch_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)

    @property
    def vision_width(self) -> int:
        return self.visual.conv1.out_channels

    @property
    def text_width(self) -> int:
        return self.clip.token_embedding.embedding_dim

    @property
    def embed_dim(self) -> int:
        return self.visual.proj.shape[1]

    @property
    def num_visual_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def num_text_blocks(self) -> int:
        return len(self.clip.transformer.resblocks)

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    def grid_size(self, image_size: Optional[int] = None) -> Tuple[int, int]:
        size = image_size or self.config.image_size
        if size % self.patch_size:
            raise ValueError(f"image size {size} is not a multiple of the patch size {self.patch_size}")
        return size // self.patch_size, size // self.patch_size

    def _resized_position_embedding(self, grid: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """The position embedding resized to ``grid`` (default: the configured image size's grid;
        empty when that size is not a multiple of the patch size)."""
        if grid is None:
            if self.config.image_size % self.patch_size:
                return torch.empty(0, device=self.device)
            grid = self.grid_size()
        with torch.no_grad():
            return resize_position_embedding(self.visual.positional_embedding, grid,
                                             self.config.pos_embed_interpolation).detach()

    def position_embedding(self, grid: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Position embedding resized to ``grid``: the buffer :attr:`resized_position_embedding`
        for the configured image size (computed where the weights are, again after every move or
        cast), computed on the fly for another grid."""
        grid = (int(grid[0]), int(grid[1]))
        if self.resized_position_embedding.numel() and grid == self.grid_size():
            return self.resized_position_embedding.to(dtype)
        return self._resized_position_embedding(grid).to(dtype)

    def _apply(self, fn, *args, **kwargs):
        result = super()._apply(fn, *args, **kwargs)
        self.resized_position_embedding = self._resized_position_embedding()
        return result

    def embed_image(self, images: torch.Tensor) -> torch.Tensor:
        """Patchify, prepend the class token, add position embeddings, ``ln_pre``: (B, 1+N, W)."""
        visual = self.visual
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected square images, got {tuple(images.shape[-2:])}")
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        class_token = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([class_token, x], dim=1)
        x = x + self.position_embedding(self.grid_size(images.shape[-1]), x.dtype)
        return visual.ln_pre(x)

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``ln_post`` then the visual projection, as CLIP does for its output token."""
        return self.visual.ln_post(tokens) @ self.visual.proj

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return open_clip.tokenize(list(texts), context_length=self.clip.context_length).to(self.device)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.clip.token_embedding(token_ids)

    def encode_text_embeddings(
        self,
        embeddings: torch.Tensor,
        eot_indices: torch.Tensor,
        before_block: Optional[BlockHook] = None,
        after_block: Optional[BlockHook] = None,
        project: bool = True,
    ) -> torch.Tensor:
        """Run the text tower on token embeddings (B, L, W) and pool the end-of-text token.

        ``before_block(i, x)`` may overwrite hidden states (deep prompt tokens) and
        ``after_block(i, x)`` may transform them (adapters). With ``project=False`` the pooled
        ``ln_final`` feature is returned for a replacement projection.
        """
        clip = self.clip
        x = embeddings + clip.positional_embedding[: embeddings.shape[1]].to(embeddings.dtype)
        mask = clip.attn_mask
        mask = mask[: x.shape[1], : x.shape[1]].to(x.dtype) if mask is not None else None
        for index, block in enumerate(clip.transformer.resblocks):
            if before_block is not None:
                x = before_block(index, x)
            x = run_block(block, x, attn_mask=mask)
            if after_block is not None:
                x = after_block(index, x)
        x = clip.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot_indices]
        if not project:
            return pooled
        projection = clip.text_projection
        return projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Plain CLIP text features (unnormalised) of a list of sentences."""
        token_ids = self.tokenize(texts)
        return self.encode_text_embeddings(self.embed_tokens(token_ids), token_ids.argmax(dim=-1))


def load_backbone(config: Optional[BackboneConfig] = None, device: Optional[torch.device | str] = None,
                  **overrides) -> CLIPBackbone:
    """Build the frozen backbone of ``config`` (fields may be overridden by keyword) on ``device``."""
    config = (config or BackboneConfig()).with_updates(**overrides) if overrides else (config or BackboneConfig())
    backbone = CLIPBackbone(build_clip_model(config), config)
    return backbone.to(resolve_device(device))
