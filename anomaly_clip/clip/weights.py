"""Where the frozen CLIP's weights come from: a local file, the open_clip / Hugging Face cache,
or a download that is tried only when the hub answers (so an offline machine gets a clear error
in seconds). Files are read by open_clip's own reader, except OpenAI's TorchScript archives.

Errors say what was looked for, what went wrong and how to provide the weights
(:class:`WeightsError`); the Python keywords of the advice are in :data:`API_OPTIONS`, and a
caller such as the command line phrases it with its own table (:meth:`WeightsError.describe`).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import open_clip
from open_clip.factory import load_state_dict
import torch
from torch import nn

from ..files import read_error_reason
from .config import BackboneConfig

logger = logging.getLogger(__name__)

OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
PROBE_TIMEOUT_S = 1.5
# How each way of providing weights is spelled by a Python caller (the command line has its own table).
API_OPTIONS = {"weights_path": "weights_path=FILE", "cache_dir": "cache_dir=DIR", "download": "download=True",
               "model_name": "model_name=NAME", "tiny": "BackboneConfig().tiny()"}
REMEDIES = {
    "weights_path": "pass a local file with {} (an OpenAI CLIP file such as ViT-L-14-336px.pt, or an open_clip "
                    "checkpoint)",
    "cache_dir": "point {} at a cache that holds them",
    "download": "download them with {} (needs network access)",
    "model_name": "name the architecture the file was saved from with {} (ViT-L-14-336 for ViT-L-14-336px.pt)",
    "tiny": "to try the pipeline without weights, use the tiny random backbone with {} (its numbers are "
            "meaningless; README: 'Try it without weights')",
}
# what every "weights not found" error advises (a caller's table without an entry leaves it out)
NOT_FOUND_REMEDIES = ("weights_path", "cache_dir", "download", "tiny")


class WeightsError(Exception):
    """CLIP weights that cannot be had: what was looked for, what went wrong, how to provide them.

    The message names the Python keywords (``weights_path=...``); :meth:`describe` phrases the
    same advice for another caller, e.g. a command line (``anomaly_clip.cli.errors``).
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


def read_clip_weights(path: str) -> Dict[str, torch.Tensor]:
    """Read a CLIP weight file: OpenAI's TorchScript archives here, everything else (OpenAI state
    dicts, open_clip checkpoints, safetensors) through open_clip's own reader; OpenAI's metadata
    entries are dropped. Raises :class:`WeightsNotFoundError` for a missing file and
    :class:`InvalidWeightsError` for one that cannot be read as CLIP weights."""
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"CLIP weights file {path}", "no such file")
    try:
        if _is_torchscript_archive(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                state_dict = dict(torch.jit.load(path, map_location="cpu").state_dict())
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the weights-only reader's remarks on refused files
                state_dict = load_state_dict(path)
        if not isinstance(state_dict, dict) or not state_dict:
            raise ValueError(f"holds a {type(state_dict).__name__}, not a CLIP state dict")
        state_dict = dict(state_dict)
        for key in OPENAI_METADATA_KEYS:
            state_dict.pop(key, None)
        return state_dict
    except Exception as error:  # noqa: BLE001 - every reader failure means the same to the user
        raise InvalidWeightsError(
            f"CLIP weights file {path} ({os.path.getsize(path)} bytes)",
            f"not readable as CLIP weights ({read_error_reason(error, path)})",
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
                                   f"open_clip knows no such tag; known tags: {known}", ("weights_path", "tiny"))
    cached = _cached_pretrained_file(pretrained_cfg, cache_dir)
    if cached:
        return cached
    source, url = _download_source(pretrained_cfg)
    subject = f"pretrained weights {model_name}/{tag} ({source})"
    missing = f"not in the local cache ({_cache_locations(pretrained_cfg, cache_dir)})"
    remedies = NOT_FOUND_REMEDIES
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
                                   ("weights_path", "cache_dir", "tiny")) from error


def load_weights(model: nn.Module, source: str) -> List[str]:
    """Load the CLIP weights file ``source`` into ``model`` (strictly: every key of the model, same
    shapes; the position embedding at its native size) and return the file's ignored keys."""
    state_dict = read_clip_weights(source)
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


def locate_weights(config: BackboneConfig) -> Optional[str]:
    """The local weights file of ``config``: its ``weights_path``, else the cached (or, as
    ``config.download`` allows, downloaded) file of its pretrained tag; None for ``random_init``.
    Asking for nothing at all is an error: a backbone is never silently random."""
    if config.weights_path:
        if not os.path.isfile(config.weights_path):
            raise WeightsNotFoundError(f"CLIP weights file {config.weights_path}", "no such file")
        return config.weights_path
    if config.random_init:
        return None
    if config.pretrained:
        return resolve_pretrained_file(config.model_name, config.pretrained, config.cache_dir, config.download)
    raise WeightsNotFoundError(
        f"CLIP weights of {config.model_name}",
        "none requested: give a pretrained tag or a weights file (random_init=True builds an untrained "
        "backbone, for tests only)", ("weights_path", "tiny"))
