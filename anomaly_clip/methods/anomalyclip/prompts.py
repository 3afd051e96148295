"""AnomalyCLIP's learnable text prompts: object-agnostic context plus deep text tokens.

Two prompts, ``"X ... X object."`` (normal) and ``"X ... X damaged object."`` (abnormal), whose
X tokens are learnt context vectors; at text blocks 1..depth-1 the hidden states right after
start-of-text are overwritten by further learnt tokens. Parameter and buffer names follow the
official checkpoint layout so released ``{"prompt_learner": ...}`` files load unchanged.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...clip.backbone import CLIPBackbone
from .config import REFERENCE_UNUSED_PROJECTION_DIM

NORMAL_STATES = ("{}",)
ABNORMAL_STATES = ("damaged {}",)
AGNOSTIC_CLASS = "object"


class PromptLearner(nn.Module):
    """Learnable normal/abnormal prompts for one or more class names.

    ``class_names=("object",)`` is the object-agnostic method; real class names give the
    object-aware ablation. ``unused_projection_dim`` keeps the official learner's never-used
    ``Linear(width, 896)`` layers so its checkpoints load strictly; 0 drops them.
    ``half_precision_deep_tokens`` rounds deep tokens to float16 before insertion, as the
    official text forward does (checkpoint fidelity), after expanding them to every prompt: in
    backward each prompt's gradient is then rounded to float16 on its own and the rounded values
    are summed in float32, ``fp16(g_normal) + fp16(g_abnormal)``, the official Adam steps.
    """

    def __init__(self, backbone: CLIPBackbone, n_ctx: int = 12, depth: int = 9, t_n_ctx: int = 4,
                 class_names: Sequence[str] = (AGNOSTIC_CLASS,), half_precision_deep_tokens: bool = True,
                 unused_projection_dim: int = REFERENCE_UNUSED_PROJECTION_DIM):
        super().__init__()
        if n_ctx < 1 or t_n_ctx < 0 or depth < 1:
            raise ValueError(f"invalid prompt sizes n_ctx={n_ctx}, depth={depth}, t_n_ctx={t_n_ctx}")
        if depth - 1 > backbone.num_text_blocks - 1:
            raise ValueError(f"depth {depth} needs {depth} text blocks, the model has {backbone.num_text_blocks}")
        width = backbone.text_width
        self.n_ctx, self.depth, self.t_n_ctx = n_ctx, depth, t_n_ctx
        self.class_names = tuple(name.replace("_", " ") for name in class_names)
        self.half_precision_deep_tokens = half_precision_deep_tokens
        n_cls = len(self.class_names)

        self.ctx_pos = nn.Parameter(torch.randn(n_cls, len(NORMAL_STATES), n_ctx, width) * 0.02)
        self.ctx_neg = nn.Parameter(torch.randn(n_cls, len(ABNORMAL_STATES), n_ctx, width) * 0.02)
        self.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(torch.randn(t_n_ctx, width) * 0.02) for _ in range(depth - 1)]
        )
        if unused_projection_dim:
            self.compound_prompt_projections = nn.ModuleList(
                [nn.Linear(width, unused_projection_dim) for _ in range(depth - 1)]
            )

        placeholder = " ".join(["X"] * n_ctx)
        for kind, states in (("pos", NORMAL_STATES), ("neg", ABNORMAL_STATES)):
            sentences = [f"{placeholder} {state.format(name)}." for state in states for name in self.class_names]
            token_ids = backbone.tokenize(sentences).cpu()
            with torch.no_grad():
                embedded = backbone.clip.token_embedding.weight.detach().cpu()[token_ids]
            length, dim = embedded.shape[-2:]
            embedded = embedded.reshape(len(states), n_cls, length, dim).transpose(0, 1)
            self.register_buffer(f"token_prefix_{kind}", embedded[:, :, :1].clone())
            self.register_buffer(f"token_suffix_{kind}", embedded[:, :, 1 + n_ctx:].clone())
            self.register_buffer(f"tokenized_prompts_{kind}", token_ids.reshape(len(states), n_cls, -1).transpose(0, 1).clone())

    def prompt_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings (2 * n_cls, L, W), normal prompts first, and their EOT positions."""
        normal = torch.cat([self.token_prefix_pos, self.ctx_pos, self.token_suffix_pos], dim=2)
        abnormal = torch.cat([self.token_prefix_neg, self.ctx_neg, self.token_suffix_neg], dim=2)
        width = normal.shape[-1]
        embeddings = torch.cat([normal.reshape(-1, normal.shape[-2], width),
                                abnormal.reshape(-1, abnormal.shape[-2], width)])
        token_ids = torch.cat([self.tokenized_prompts_pos.reshape(-1, self.tokenized_prompts_pos.shape[-1]),
                               self.tokenized_prompts_neg.reshape(-1, self.tokenized_prompts_neg.shape[-1])])
        return embeddings, token_ids.argmax(dim=-1)

    def _insert_deep_tokens(self, block_index: int, hidden: torch.Tensor) -> torch.Tensor:
        if not 1 <= block_index < self.depth or self.t_n_ctx == 0:
            return hidden
        tokens = self.compound_prompts_text[block_index - 1].expand(hidden.shape[0], -1, -1)
        if self.half_precision_deep_tokens:
            # expanded first, then rounded, as the official text forward does: backward then rounds
            # each prompt's gradient to float16 on its own and adds the rounded values in float32
            tokens = tokens.half()
        return torch.cat([hidden[:, :1], tokens.to(hidden.dtype), hidden[:, 1 + self.t_n_ctx:]], dim=1)

    def forward(self, backbone: CLIPBackbone) -> torch.Tensor:
        """L2-normalised text features (n_cls, 2, E): [normal, abnormal] for each class name."""
        embeddings, eot = self.prompt_embeddings()
        features = backbone.encode_text_embeddings(embeddings, eot, before_block=self._insert_deep_tokens)
        features = features.float().reshape(2, -1, features.shape[-1]).transpose(0, 1)
        return F.normalize(features, dim=-1)

    def class_index(self, class_names: Optional[Sequence[str]], batch: int, device: torch.device) -> torch.Tensor:
        """Row of the text features to use for each image (always 0 when object-agnostic)."""
        if len(self.class_names) == 1 or class_names is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        lookup = {name: i for i, name in enumerate(self.class_names)}
        missing = sorted({n for n in class_names if n.replace("_", " ") not in lookup})
        if missing:
            raise KeyError(f"object-aware prompts know {list(self.class_names)}, not {missing}")
        return torch.tensor([lookup[n.replace("_", " ")] for n in class_names], device=device)
