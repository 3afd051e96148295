"""APRIL-GAN's checkpoint format: ``{"trainable_linearlayer": state_dict}`` with keys
``fc.<i>.weight`` / ``fc.<i>.bias``, one linear layer per feature block (``train.py`` of
ByChelsea/VAND-APRIL-GAN, e.g. the released ``exps/pretrained/{mvtec,visa}_pretrained.pth``)."""
from __future__ import annotations

import re
from typing import Any, Dict, Mapping, Optional

import torch

OFFICIAL_KEY = "trainable_linearlayer"
_KEY = re.compile(r"^fc\.(\d+)\.(weight|bias)$")


def recognise(contents: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The official checkpoint in a file's dictionary ``contents``, or None when it is not one."""
    if isinstance(contents, Mapping) and set(contents) == {OFFICIAL_KEY} \
            and isinstance(contents[OFFICIAL_KEY], Mapping):
        return dict(contents)
    return None


def projection_state(checkpoint: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The linear layers of an official checkpoint, checked against ``own`` (our layers' state:
    names and shapes). Each problem is a :class:`ValueError` in one line: keys that are not
    ``fc.<i>.weight/bias``, values that are not tensors (named with their type), another number of
    layers than ``--features_list`` asks for, a layer's missing weight or bias (named), or shapes
    that do not fit the backbone."""
    state = dict(checkpoint[OFFICIAL_KEY])
    unknown = sorted(str(key) for key in state if not isinstance(key, str) or not _KEY.match(key))
    if unknown:
        raise ValueError(f"not an APRIL-GAN linear-layer state: unexpected keys {unknown[:6]}")
    not_tensors = sorted(f"{key} ({type(value).__name__})" for key, value in state.items()
                         if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise ValueError(f"the official checkpoint's linear layers hold values that are not tensors: "
                         f"{', '.join(not_tensors[:6])}; it is damaged or not an APRIL-GAN file")
    layers = len({_KEY.match(key).group(1) for key in state})
    expected = len({_KEY.match(key).group(1) for key in own})
    if layers != expected:
        raise ValueError(f"the official checkpoint holds {layers} linear layers, this configuration has {expected} "
                         "(--features_list names one block per layer; the released files use 6 12 18 24)")
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        found = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                            f"unexpected {unexpected}" if unexpected else "") if part)
        raise ValueError(f"the official checkpoint's linear layers do not match the {expected} of this configuration "
                         f"({found}): it is incomplete or damaged")
    problems = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                if v.shape != own[k].shape]
    if problems:
        raise ValueError(f"official linear layers do not fit this backbone (width -> embedding size): {problems[:4]}")
    return state


def checkpoint_files(state: Mapping[str, torch.Tensor], epoch: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """File name -> payload of the official format for our linear layers' state."""
    name = f"official_epoch_{epoch}.pth" if epoch is not None else "official.pth"
    return {name: {OFFICIAL_KEY: {k: v.detach().cpu().clone() for k, v in state.items()}}}
