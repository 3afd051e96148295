"""AnomalyCLIP's official checkpoint format: ``{"prompt_learner": state_dict}``.

Released files (e.g. ``9_12_4_multiscale_visa/epoch_15.pth``) load into our prompt learner as
they are; training also writes this format so the official code can read our results.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

OFFICIAL_KEY = "prompt_learner"


def recognise(contents: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The official checkpoint in a file's dictionary ``contents``, or None when it is not one."""
    if isinstance(contents, Mapping) and set(contents) == {OFFICIAL_KEY}:
        return dict(contents)
    return None


def prompt_state(checkpoint: Mapping[str, Any], own: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The prompt-learner state of an official checkpoint, checked against our learner's shapes."""
    state = dict(checkpoint[OFFICIAL_KEY])
    problems = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in state.items() if k in own and v.shape != own[k].shape]
    if problems:
        raise ValueError(
            "official prompt learner does not fit this configuration (check --n_ctx/--depth/--t_n_ctx "
            f"and the backbone): {problems[:6]}"
        )
    return state


def checkpoint_files(state: Mapping[str, torch.Tensor], epoch: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    """File name -> payload of the official format for a prompt-learner state."""
    name = f"official_epoch_{epoch}.pth" if epoch is not None else "official.pth"
    return {name: {OFFICIAL_KEY: {k: v.detach().cpu() for k, v in state.items()}}}
