"""AA-CLIP's official checkpoint files: ``text_adapter.pth`` and ``image_adapter[_N].pth``.

Reading converts the official key layout into our adapters' names; writing does the reverse,
so released adapter folders load as they are and our training can be read by the official code.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import torch

from ...files import read_torch_file
from .adapters import ImageAdapter, TextAdapter
from .config import AAClipConfig, AdaptedImageConfig

TEXT_FILE = "text_adapter.pth"
IMAGE_FILE = "image_adapter.pth"
IMAGE_EPOCH_FILE = re.compile(r"^image_adapter_(\d+)\.pth$")


def read_checkpoint(path: str, contents: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
    """Read the official code's adapter files: a folder holding ``text_adapter.pth`` and
    ``image_adapter.pth`` / ``image_adapter_{epoch}.pth`` (the plain file, else the latest
    epoch), or one of those files, whose dictionary ``contents`` may already have been read (the
    text adapter beside an image file is picked up). None when ``path`` is none of these."""
    location = Path(path)
    if location.is_dir():
        image_file = _latest_image_file(location)
        text_file = location / TEXT_FILE
        if image_file is None:
            if text_file.is_file():
                raise ValueError(f"{location} holds {TEXT_FILE} but no image adapter "
                                 f"({IMAGE_FILE} or image_adapter_<epoch>.pth): train the image stage first")
            return None
        return _official_payload(image_file, text_file if text_file.is_file() else None)
    if not location.is_file():
        return None
    contents = dict(contents) if contents is not None else _read_torch_dict(location)
    if contents is None or "format" in contents:
        return None
    if "image_adapter" in contents:
        text_file = location.parent / TEXT_FILE
        return _official_payload(location, text_file if text_file.is_file() else None, contents)
    if "text_adapter" in contents:
        raise ValueError(f"{location} is an AA-CLIP text adapter alone; pass the folder or the image adapter file "
                         "(image_adapter.pth) so that both stages are loaded")
    return None


def _read_torch_dict(path: Path) -> Optional[Dict[str, Any]]:
    """A file's dictionary, read weights-only; a refused or unreadable file is an error naming it."""
    contents = read_torch_file(path, "AA-CLIP adapter checkpoint")
    return contents if isinstance(contents, dict) else None


def _latest_image_file(folder: Path) -> Optional[Path]:
    if (folder / IMAGE_FILE).is_file():
        return folder / IMAGE_FILE
    epochs = {int(m.group(1)): p for p in folder.iterdir() if (m := IMAGE_EPOCH_FILE.match(p.name)) and p.is_file()}
    return epochs[max(epochs)] if epochs else None


def _official_payload(image_file: Path, text_file: Optional[Path],
                      image_contents: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    image_contents = image_contents if image_contents is not None else _read_torch_dict(image_file)
    if not image_contents or "image_adapter" not in image_contents:
        raise ValueError(f"{image_file} has no 'image_adapter' entry: not an AA-CLIP image adapter checkpoint")
    text_state = None
    if text_file is not None:
        text_contents = _read_torch_dict(text_file)
        if not text_contents or "text_adapter" not in text_contents:
            raise ValueError(f"{text_file} has no 'text_adapter' entry: not an AA-CLIP text adapter checkpoint")
        text_state = text_contents["text_adapter"]
    return {"image_adapter": image_contents["image_adapter"], "text_adapter": text_state,
            "epoch": image_contents.get("epoch"), "source": str(image_file)}


def _check_keys(found: Mapping[str, Any], expected: Sequence[str], what: str, hint: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        raise ValueError(f"official {what} does not fit this configuration ({hint}): "
                         f"missing {missing[:6]}, unexpected {unexpected[:6]}")


def _projection_key(prefix: str, relu: bool) -> str:
    return f"{prefix}.fc.0.weight" if relu else f"{prefix}.fc.weight"


def official_text_state(adapter: TextAdapter) -> Dict[str, torch.Tensor]:
    """Text adapter in the official layout: adapters ``{i}.fc.0.weight``, then the projection."""
    state = {f"{i}.fc.0.weight": a.linear.weight for i, a in enumerate(adapter.blocks.adapters)}
    state[f"{len(adapter.blocks)}.fc.0.weight"] = adapter.projection.linear.weight
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def text_state_from_official(state: Mapping[str, torch.Tensor], config: AAClipConfig) -> Dict[str, torch.Tensor]:
    count = config.text_adapt_until
    expected = [f"{i}.fc.0.weight" for i in range(count + 1)]
    _check_keys(state, expected, "text adapter", f"--text_adapt_until {count}")
    converted = {f"blocks.adapters.{i}.linear.weight": state[f"{i}.fc.0.weight"] for i in range(count)}
    converted["projection.linear.weight"] = state[f"{count}.fc.0.weight"]
    return converted


def official_image_state(adapter: ImageAdapter, relu: bool) -> Dict[str, torch.Tensor]:
    """Image adapter in the official layout (``layer_adapters``, ``seg_proj``, ``det_proj``)."""
    state = {f"layer_adapters.{i}.fc.0.weight": a.linear.weight for i, a in enumerate(adapter.blocks.adapters)}
    state.update({_projection_key(f"seg_proj.{i}", relu): p.linear.weight
                  for i, p in enumerate(adapter.level_projections)})
    state[_projection_key("det_proj", relu)] = adapter.detection_projection.linear.weight
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def image_state_from_official(state: Mapping[str, torch.Tensor], config: AdaptedImageConfig) -> Dict[str, torch.Tensor]:
    count, levels, relu = config.image_adapt_until, len(config.features_list), config.relu
    adapters = {f"layer_adapters.{i}.fc.0.weight": f"blocks.adapters.{i}.linear.weight" for i in range(count)}
    projections = {_projection_key(f"seg_proj.{i}", relu): f"level_projections.{i}.linear.weight"
                   for i in range(levels)}
    names = {**adapters, **projections, _projection_key("det_proj", relu): "detection_projection.linear.weight"}
    _check_keys(state, list(names), "image adapter", f"--image_adapt_until {count}, {levels} levels")
    return {ours: state[theirs] for theirs, ours in names.items()}
