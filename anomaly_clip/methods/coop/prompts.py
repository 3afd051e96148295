"""CoOp's learnable prompts for anomaly detection: ``[X]_1 ... [X]_M normal [cls].`` and
``[X]_1 ... [X]_M anomalous [cls].``, the M context vectors shared by both states and all classes
(CoOp's unified context, Zhou et al. 2022), so prompts exist for any class name, seen or not."""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...clip.backbone import CLIPBackbone

STATES = ("normal {}", "anomalous {}")


class CoOpPromptLearner(nn.Module):
    """``ctx`` (n_ctx, width): the learnt context vectors, initialised N(0, 0.02) like AnomalyCLIP's."""

    def __init__(self, backbone: CLIPBackbone, n_ctx: int = 12):
        super().__init__()
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, backbone.text_width, device=backbone.device) * 0.02)
        self._tokens: Dict[Tuple[str, torch.device], Tuple[torch.Tensor, torch.Tensor]] = {}

    def sentences(self, class_name: str) -> Tuple[str, str]:
        """The two sentences of a class with the context written as ``X`` placeholders."""
        placeholder = " ".join(["X"] * self.n_ctx)
        word = class_name.replace("_", " ")
        return tuple(f"{placeholder} {state.format(word)}." for state in STATES)

    def _embedded(self, backbone: CLIPBackbone, class_name: str) -> Tuple[torch.Tensor, torch.Tensor]:
        """Frozen token embeddings (2, L, W) of a class's sentences and their EOT positions (2,)."""
        key = (class_name, backbone.device)
        if key not in self._tokens:
            token_ids = backbone.tokenize(list(self.sentences(class_name)))
            with torch.no_grad():
                embedded = backbone.embed_tokens(token_ids)
            self._tokens[key] = (embedded, token_ids.argmax(dim=-1))
        return self._tokens[key]

    def forward(self, backbone: CLIPBackbone, class_names: Sequence[str]) -> torch.Tensor:
        """Unit text features (C, 2, E), rows [normal, anomalous], of C class names."""
        embedded, eot = zip(*(self._embedded(backbone, name) for name in class_names))
        embedded, eot = torch.cat(embedded), torch.cat(eot)
        context = self.ctx.to(embedded.dtype).expand(embedded.shape[0], -1, -1)
        prompts = torch.cat([embedded[:, :1], context, embedded[:, 1 + self.n_ctx:]], dim=1)
        features = backbone.encode_text_embeddings(prompts, eot)
        return F.normalize(features.float(), dim=-1).reshape(len(class_names), 2, -1)
