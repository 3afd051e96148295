"""WinCLIP's window machinery as pure functions: window indices, window embeddings (each window its
own sequence, all windows of all images batched in memory-bounded chunks), harmonic aggregation,
and the zero- and few-shot scores.

Sources: the WinCLIP paper (Jeong et al., CVPR 2023), equations 1-4, and anomalib's implementation
(``src/anomalib/models/image/winclip/{torch_model,utils}.py``) run with the open_clip it pins (2.24).
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple

import torch
import torch.nn.functional as F

from ...clip.backbone import CLIPBackbone
from ...clip.blocks import run_block
from ...engine.precision import float32_einsum
from ...engine.references import nearest_distances

FULL_SCALE = 0
"""Key of the full-image patch tokens among the few-shot reference features (window scales are >= 1)."""


def window_indices(grid: Tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """(W, scale * scale) row-major patch indices of every ``scale`` x ``scale`` window of a
    ``grid`` = (rows, columns) patch grid, windows in row-major order of their top-left patch.

    >>> window_indices((3, 3), 2).tolist()
    [[0, 1, 3, 4], [1, 2, 4, 5], [3, 4, 6, 7], [4, 5, 7, 8]]

    Raises ValueError when the window does not fit the grid or ``scale``/``stride`` is not positive.
    """
    rows, columns = grid
    if scale < 1 or stride < 1:
        raise ValueError(f"window scale and stride must be positive, got {scale} and {stride}")
    if scale > rows or scale > columns:
        raise ValueError(f"a {scale} x {scale} window does not fit the {rows} x {columns} patch grid")
    tops = torch.arange(0, rows - scale + 1, stride)
    lefts = torch.arange(0, columns - scale + 1, stride)
    offsets = (torch.arange(scale)[:, None] * columns + torch.arange(scale)[None, :]).reshape(-1)
    starts = (tops[:, None] * columns + lefts[None, :]).reshape(-1)
    return starts[:, None] + offsets[None, :]


def coverage(indices: torch.Tensor, patches: int) -> torch.Tensor:
    """(W, N) float {0, 1} matrix: window w covers patch n."""
    matrix = torch.zeros(indices.shape[0], patches, device=indices.device)
    return matrix.scatter_(1, indices, 1.0)


def harmonic_aggregation(window_scores: torch.Tensor, covering: torch.Tensor) -> torch.Tensor:
    """(B, N) per-patch harmonic mean of the scores (B, W) of the windows covering each patch,
    ``covering`` from :func:`coverage` (WinCLIP eq. 3). A zero window score makes the mean 0; a
    patch no window covers gets 0 (anomalib's ``nan_to_num``)."""
    counts = covering.sum(dim=0)
    with torch.autocast(window_scores.device.type, enabled=False):
        scores, covering = window_scores.float(), covering.float()
        zero = scores == 0  # 1 / 0 would meet the zeros of the coverage matrix as inf * 0 = nan
        reciprocal = torch.where(zero, torch.ones_like(scores), scores).reciprocal() @ covering
        touches_zero = (zero.float() @ covering) > 0
    return (counts / reciprocal).masked_fill(touches_zero, 0.0).nan_to_num(nan=0.0, posinf=0.0)


def harmonic_mean(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise harmonic mean ``K / sum(1 / map)`` of K equally shaped maps (anomalib's
    aggregation across scales; a zero anywhere gives 0)."""
    stacked = torch.stack([m.float() for m in maps])
    return stacked.shape[0] / stacked.reciprocal().sum(dim=0)


def abnormal_probability(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(cos(embedding, [t_normal, t_abnormal]) / T)[abnormal]`` of (B, ..., E) embeddings
    against per-image text rows (B, 2, E) (WinCLIP eq. 1); shape (B, ...), float32."""
    embeddings = F.normalize(embeddings.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    flat = embeddings.reshape(embeddings.shape[0], -1, embeddings.shape[-1])
    logits = float32_einsum("bne,bce->bnc", flat, text) / temperature
    return logits.softmax(dim=-1)[..., 1].reshape(embeddings.shape[:-1])


def association_scores(queries: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """WinCLIP+'s visual association score (eq. 4) of (Q, C) queries: ``min over the reference
    rows (M, C) of (1 - cos) / 2``, in [0, 1], computed blockwise on the queries' device."""
    return nearest_distances(F.normalize(queries.float(), dim=-1), references) / 2


def run_image_tower(backbone: CLIPBackbone, tokens: torch.Tensor) -> torch.Tensor:
    """The visual transformer's blocks on (B, L, W) tokens after ``ln_pre``, each row of the batch
    one sequence."""
    for block in backbone.visual.transformer.resblocks:
        tokens = run_block(block, tokens)
    return tokens


def pooled_embedding(backbone: CLIPBackbone, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's output embedding ``ln_post(class token) @ proj`` of (B, L, W) tokens: (B, E)."""
    return backbone.project_tokens(tokens[:, 0])


def window_embeddings(backbone: CLIPBackbone, tokens: torch.Tensor, indices: torch.Tensor,
                      max_tokens: int) -> torch.Tensor:
    """(B, W, E) embeddings of the windows ``indices`` (W, k) of each image.

    ``tokens`` (B, 1+N, width) are the image's tokens after class and position embeddings and
    ``ln_pre`` (a per-token norm, so taking a window's tokens after it equals taking them before).
    Each window is the class token followed by its k patch tokens, **one sequence of its own**
    through the whole transformer, then :func:`pooled_embedding`. All windows of all images go
    through in chunks of at most ``max_tokens`` tokens (whole sequences, at least one), so memory
    stays bounded while the blocks see large batches.
    """
    batch = tokens.shape[0]
    count, length = indices.shape
    per_chunk = max(1, max_tokens // (length + 1))
    indices = indices.to(tokens.device)
    outputs = []
    for start in range(0, batch * count, per_chunk):
        flat = torch.arange(start, min(start + per_chunk, batch * count), device=tokens.device)
        images, windows = flat // count, flat % count
        sequences = torch.cat([tokens[images, :1], tokens[images[:, None], 1 + indices[windows]]], dim=1)
        outputs.append(pooled_embedding(backbone, run_image_tower(backbone, sequences)))
    return torch.cat(outputs).reshape(batch, count, -1)


def zero_shot_grid(image_scores: torch.Tensor, window_scores: Mapping[int, torch.Tensor],
                   coverings: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """(B, N) zero-shot patch scores: per scale the harmonic aggregation of its window scores
    (B, W_s), plus the image score broadcast over the grid as one more scale, combined by their
    harmonic mean."""
    patches = next(iter(coverings.values())).shape[1]
    maps = [image_scores[:, None].expand(-1, patches)]
    maps += [harmonic_aggregation(window_scores[scale], coverings[scale]) for scale in sorted(window_scores)]
    return harmonic_mean(maps)


def few_shot_grid(patch_tokens: torch.Tensor, windows: Mapping[int, torch.Tensor],
                  references: Mapping[int, torch.Tensor], coverings: Mapping[int, torch.Tensor]) -> torch.Tensor:
    """(B, N) WinCLIP+ patch scores of images of one class: the association score of each full-scale
    patch token (B, N, C) with ``references[FULL_SCALE]``, and of each window (B, W_s, E) with the
    same scale's reference windows harmonically aggregated per patch; the scales' maps averaged
    arithmetically."""
    batch, patches, _ = patch_tokens.shape
    maps = [association_scores(patch_tokens.reshape(batch * patches, -1), references[FULL_SCALE]).view(batch, patches)]
    for scale in sorted(windows):
        count = windows[scale].shape[1]
        scores = association_scores(windows[scale].reshape(batch * count, -1), references[scale]).view(batch, count)
        maps.append(harmonic_aggregation(scores, coverings[scale]))
    return torch.stack(maps).mean(dim=0)


def window_coverings(grid: Tuple[int, int], scales: Sequence[int], stride: int,
                     device: torch.device) -> Tuple[Dict[int, torch.Tensor], Dict[int, torch.Tensor]]:
    """({scale: (W_s, s*s) window indices}, {scale: (W_s, N) coverage}) of a patch grid."""
    indices = {scale: window_indices(grid, scale, stride).to(device) for scale in scales}
    coverings = {scale: coverage(index, grid[0] * grid[1]) for scale, index in indices.items()}
    return indices, coverings
