"""Frozen CLIP backbone: building open_clip ViTs from any weight source, and batched encoders.

Both methods only ever *read* CLIP: its weights are frozen, its blocks are re-run by our own
forward functions (``dpam.py`` for the image tower, :meth:`CLIPBackbone.encode_text_embeddings`
for the text tower) so that prompts, deep tokens, DPAM and adapters can be injected without
patching open_clip modules in place.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
import warnings
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from .blocks import run_block

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

ACTIVATIONS = ("quick_gelu", "gelu")
# How the grid of position embeddings is resized to another input size (F.interpolate modes;
# "_antialias" adds ``antialias=True``, whose bicubic kernel differs from the plain one even when
# upsampling). AnomalyCLIP's code resizes "bilinear"; AA-CLIP's, through its open_clip copy,
# "bicubic_antialias". Checkpoints record the rule they were trained with.
POS_EMBED_INTERPOLATIONS = ("bilinear", "bicubic", "bicubic_antialias")
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")

BlockHook = Callable[[int, torch.Tensor], torch.Tensor]


PROBE_TIMEOUT_S = 1.5
# heads every table computed with an untrained backbone
RANDOM_WEIGHTS_WARNING = "random (untrained) CLIP weights: these numbers are meaningless"

# How each way of providing weights is spelled by a caller: Python keywords, command-line flags.
API_OPTIONS = {"weights_path": "weights_path=FILE", "cache_dir": "cache_dir=DIR", "download": "download=True",
               "model_name": "model_name=NAME"}
CLI_OPTIONS = {"weights_path": "--weights FILE", "cache_dir": "--cache-dir DIR", "download": "--download",
               "model_name": "--model NAME"}
REMEDIES = {
    "weights_path": "pass a local file with {} (an OpenAI CLIP file such as ViT-L-14-336px.pt, or an open_clip "
                    "checkpoint)",
    "cache_dir": "point {} at a cache that holds them",
    "download": "download them with {} (needs network access)",
    "model_name": "name the architecture the file was saved from with {} (ViT-L-14-336 for ViT-L-14-336px.pt)",
}


class WeightsError(Exception):
    """CLIP weights that cannot be had: what was looked for, what went wrong, how to provide them.

    The message names the Python keywords (``weights_path=...``); :meth:`describe` phrases the
    same advice for another caller, e.g. a command line with :data:`CLI_OPTIONS`.
    """

    def __init__(self, subject: str, problem: str, remedies: Sequence[str] = ("weights_path",)):
        self.subject = subject
        self.problem = problem
        self.remedies = tuple(remedies)
        super().__init__(self.describe(API_OPTIONS))

    def describe(self, options: Mapping[str, str]) -> str:
        """The message with each remedy spelled by ``options`` (remedies it lacks are left out)."""
        steps = [REMEDIES[key].format(options[key]) for key in self.remedies if key in options]
        advice = f" To fix it, {'; or '.join(steps)}." if steps else ""
        return f"{self.subject}: {self.problem}.{advice}"

    def __reduce__(self):
        return type(self), (self.subject, self.problem, self.remedies)


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """The requested CLIP weights are neither on disk nor in the cache, and were not downloaded."""


class InvalidWeightsError(WeightsError, ValueError):
    """A CLIP weights file exists but cannot be used: truncated, corrupt, or another architecture."""


@dataclass(frozen=True)
class BackboneConfig:
    """Everything that determines what the frozen CLIP computes.

    ``activation`` is explicit because OpenAI weights were trained with QuickGELU while
    open_clip's plain configs build exact GELU; each method records the one its published
    numbers came from. ``pos_embed_interpolation`` likewise differs between the two methods.
    ``download`` decides whether uncached pretrained weights are fetched: ``None`` only when a
    quick connection check passes (no retry loops when offline), ``True`` always, ``False`` never.
    It is a choice of the run, not of the model: :meth:`to_dict` leaves it out, so a checkpoint
    never carries one machine's network setting to another.
    """

    model_name: str = "ViT-L-14-336"
    pretrained: Optional[str] = "openai"
    weights_path: Optional[str] = None
    random_init: bool = False
    activation: str = "quick_gelu"
    image_size: int = 518
    pos_embed_interpolation: str = "bilinear"
    cache_dir: Optional[str] = None
    download: Optional[bool] = None
    random_seed: int = 0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.pos_embed_interpolation not in POS_EMBED_INTERPOLATIONS:
            raise ValueError(
                f"pos_embed_interpolation must be one of {POS_EMBED_INTERPOLATIONS}, "
                f"got {self.pos_embed_interpolation!r}"
            )
        if self.image_size <= 0:
            raise ValueError(f"image_size must be positive, got {self.image_size}")
        if self.download not in (None, True, False):
            raise ValueError(f"download must be None (automatic), True or False, got {self.download!r}")

    def to_dict(self) -> dict:
        values = asdict(self)
        del values["download"]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "BackboneConfig":
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def with_updates(self, **changes) -> "BackboneConfig":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _unwrap_state_dict(checkpoint: object, path: str) -> Dict[str, torch.Tensor]:
    """Accept OpenAI JIT archives, OpenAI state dicts and open_clip checkpoints alike."""
    if isinstance(checkpoint, torch.jit.ScriptModule):
        state_dict = dict(checkpoint.state_dict())
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state_dict = dict(checkpoint["state_dict"])
    elif isinstance(checkpoint, dict):
        state_dict = dict(checkpoint)
    else:
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a CLIP state dict")
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    for key in OPENAI_METADATA_KEYS:
        state_dict.pop(key, None)
    return state_dict


def read_clip_weights(path: str) -> Dict[str, torch.Tensor]:
    """Read a CLIP weight file (OpenAI JIT archive / state dict, open_clip, or safetensors)."""
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"CLIP weights file {path}", "no such file")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return _unwrap_state_dict(load_file(path), path)
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                checkpoint = torch.jit.load(path, map_location="cpu")
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        return _unwrap_state_dict(checkpoint, path)
    except Exception as error:  # noqa: BLE001 - every reader failure means the same to the user
        raise InvalidWeightsError(
            f"CLIP weights file {path} ({os.path.getsize(path)} bytes)",
            f"not readable as CLIP weights, maybe truncated by an interrupted download ({error})",
        ) from error


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's released .pt files are TorchScript archives: zip files holding ``code/`` and constants."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") for name in archive.namelist())


def _cached_pretrained_file(pretrained_cfg: dict, cache_dir: Optional[str]) -> Optional[str]:
    """Return the locally cached file of an open_clip pretrained tag without touching the network."""
    hub_entry = pretrained_cfg.get("hf_hub", "")
    if hub_entry:
        from huggingface_hub import hf_hub_download

        repo_id, filename = os.path.split(hub_entry)
        names = [filename] if filename else []
        names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for name in dict.fromkeys(names):
            try:
                return hf_hub_download(repo_id, name, cache_dir=cache_dir, local_files_only=True)
            except Exception:  # noqa: BLE001 - any miss means "not cached"
                continue
    url = pretrained_cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def can_reach(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``url``'s host, or to the proxy that would carry the request,
    opens within ``timeout`` seconds. It runs in a daemon thread, so a hanging name lookup
    cannot hold the caller longer."""
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and host and not urllib.request.proxy_bypass(host):
        proxy_parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or (443 if proxy_parts.scheme == "https" else 80)
    if not host:
        return False
    answered, reached = threading.Event(), []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            reached.append(True)
        except OSError:
            pass
        answered.set()

    threading.Thread(target=connect, daemon=True).start()
    answered.wait(timeout)
    return bool(reached)


def _download_source(pretrained_cfg: dict) -> Tuple[str, str]:
    """(description, URL) of where open_clip downloads a pretrained tag from."""
    hub_entry = pretrained_cfg.get("hf_hub", "")
    if hub_entry:
        from huggingface_hub import constants

        return f"Hugging Face repo {hub_entry.rstrip('/')}", constants.ENDPOINT
    url = pretrained_cfg.get("url", "")
    return url, url


def _cache_locations(pretrained_cfg: dict, cache_dir: Optional[str]) -> str:
    places = []
    if pretrained_cfg.get("hf_hub"):
        from huggingface_hub import constants

        places.append(cache_dir or constants.HF_HUB_CACHE)
    if pretrained_cfg.get("url"):
        places.append(cache_dir or os.path.expanduser("~/.cache/clip"))
    return " and ".join(dict.fromkeys(places))


def resolve_pretrained_file(model_name: str, tag: str, cache_dir: Optional[str] = None,
                            download: Optional[bool] = None) -> str:
    """The local file behind an open_clip pretrained tag: from the cache, else downloaded.

    ``download=None`` downloads only when the download host answers :func:`can_reach` (so an
    offline machine gets an answer in seconds, not after minutes of retries) and never when
    ``HF_HUB_OFFLINE`` is set; ``True`` always tries; ``False`` never does.
    """
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not pretrained_cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise WeightsNotFoundError(f"pretrained tag {tag!r} of {model_name}",
                                   f"open_clip knows no such tag; known tags: {known}")
    cached = _cached_pretrained_file(pretrained_cfg, cache_dir)
    if cached:
        return cached
    source, url = _download_source(pretrained_cfg)
    subject = f"pretrained weights {model_name}/{tag} ({source})"
    missing = f"not in the local cache ({_cache_locations(pretrained_cfg, cache_dir)})"
    remedies = ("weights_path", "cache_dir", "download")
    if download is None and os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"):
        raise WeightsNotFoundError(subject, f"{missing}, and HF_HUB_OFFLINE is set", remedies)
    if download is None and not can_reach(url):
        raise WeightsNotFoundError(
            subject, f"{missing}, and {urlsplit(url).hostname} could not be reached within {PROBE_TIMEOUT_S:g} s",
            remedies)
    if download is False:
        raise WeightsNotFoundError(subject, f"{missing}, and downloading is off", remedies)
    logger.info("Downloading %s", subject)
    try:
        return open_clip.download_pretrained(pretrained_cfg, cache_dir=cache_dir)
    except Exception as error:  # noqa: BLE001 - every failure gets the same actionable message
        raise WeightsNotFoundError(subject, f"{missing}, and the download failed: {error}",
                                   ("weights_path", "cache_dir")) from error


def build_clip_model(config: BackboneConfig) -> nn.Module:
    """Build the open_clip model of ``config`` and load its weights (never silently random)."""
    if config.model_name not in open_clip.list_models():
        raise ValueError(f"Unknown open_clip model {config.model_name!r}; known: {open_clip.list_models()}")
    if config.weights_path:
        weights_file = config.weights_path
        if not os.path.isfile(weights_file):
            raise WeightsNotFoundError(f"CLIP weights file {weights_file}", "no such file")
    elif config.random_init:
        weights_file = None
    elif config.pretrained:
        weights_file = resolve_pretrained_file(config.model_name, config.pretrained, config.cache_dir,
                                               config.download)
    else:
        raise WeightsNotFoundError(
            f"CLIP weights of {config.model_name}",
            "none requested: give a pretrained tag or a weights file (random_init=True builds an untrained "
            "backbone, for tests only)")
    with torch.random.fork_rng(devices=[]):
        # seeded so that a random backbone, and any checkpoint trained on it, can be rebuilt exactly
        torch.manual_seed(config.random_seed)
        model = open_clip.create_model(config.model_name, pretrained=None,
                                       force_quick_gelu=config.activation == "quick_gelu")
    if weights_file is None:
        logger.warning("Built %s with RANDOM weights: outputs are meaningless for anomaly detection.",
                       config.model_name)
        return model
    state_dict = read_clip_weights(weights_file)
    incompatible = _load_weights(model, state_dict, weights_file)
    logger.info("Loaded %s weights from %s (%s activation)%s", config.model_name, weights_file,
                config.activation, f"; ignored keys {incompatible}" if incompatible else "")
    return model


def _load_weights(model: nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> list:
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape) and k != "visual.positional_embedding"
    ]
    if missing or mismatched:
        raise InvalidWeightsError(
            f"CLIP weights file {source}",
            f"does not fit this architecture. Missing keys: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"shape mismatches: {mismatched[:8]}", ("model_name", "weights_path"))
    pos_key = "visual.positional_embedding"
    if pos_key in state_dict and state_dict[pos_key].shape != own[pos_key].shape:
        raise InvalidWeightsError(
            f"CLIP weights file {source}",
            f"visual positional embedding {tuple(state_dict[pos_key].shape)} does not fit "
            f"{tuple(own[pos_key].shape)}; resizing happens at run time, load the native-size weights")
    ignored = [k for k in state_dict if k not in own]
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)
    return ignored


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
        self._pos_embed_cache: Dict[tuple, torch.Tensor] = {}

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

    def position_embedding(self, grid: Tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        """Position embedding resized to ``grid``; computed once per grid, device and dtype."""
        source = self.visual.positional_embedding
        key = (tuple(grid), source.device, dtype)
        if key not in self._pos_embed_cache:
            with torch.no_grad():
                resized = resize_position_embedding(source, grid, self.config.pos_embed_interpolation)
            self._pos_embed_cache[key] = resized.to(dtype)
        return self._pos_embed_cache[key]

    def _apply(self, fn, *args, **kwargs):
        self._pos_embed_cache = {}
        return super()._apply(fn, *args, **kwargs)

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


def resolve_device(device: Optional[torch.device | str] = None) -> torch.device:
    """CUDA when present, CPU otherwise, unless a device is given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
