"""Binary ranking metrics (AUROC, average precision, F1-max) from one sort, with scikit-learn's tie handling.

Going down the scores, the true positive count ``tp`` only grows at scores of positive items,
so all three metrics are sums or maxima over the distinct positive scores ("groups"), given
per group: ``p`` positives and ``n`` negatives at exactly that score and ``fp`` negatives at
or above it (``P`` positives and ``N`` negatives in all):

* AUROC = ``sum(p * (2 (N - fp) + n)) / (2 P N)``: the trapezoid area of ``roc_auc_score``
  (Mann-Whitney with ties counted half), in exact integer arithmetic;
* AP = ``sum(p / P * tp / (tp + fp))``: the step sum of ``average_precision_score``;
* F1-max = ``max(2 tp / (tp + fp + P))``: the best F1 on the precision-recall curve, reached by
  calling anomalous every item scoring at or above its group's score (the F1-max threshold).

A score set whose labels are all equal has none of them: NaN ("not applicable"), never 0.5.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._inputs import as_binary, as_scores
from .ordering import DEFAULT_BLOCK_SIZE, count_greater_equal, key_dtype

NOT_APPLICABLE = float("nan")


@dataclass(frozen=True)
class RankingMetrics:
    """AUROC, average precision and F1-max of one ranking (NaN when not applicable), with the
    threshold reaching F1-max: items scoring ``>= f1_threshold`` are called positive (the highest
    such score when several thresholds tie)."""

    auroc: float
    average_precision: float
    f1_max: float
    f1_threshold: float = float("nan")


@dataclass(frozen=True)
class PositiveGroups:
    """The distinct scores of the positive items, highest first, with the counts ranking metrics need."""

    scores: Tensor
    """float [G]: the groups' scores, descending."""
    positives: Tensor
    """int64 [G]: positives scoring exactly the group's score."""
    negatives: Tensor
    """int64 [G]: negatives scoring exactly the group's score."""
    negatives_above: Tensor
    """int64 [G]: negatives scoring strictly higher."""
    weights: Optional[Tensor]
    """float64 [G]: summed weights of the group's positives (when weights were given)."""
    num_positives: int
    num_negatives: int

    @property
    def true_positives(self) -> Tensor:
        """Positives at or above each group's score."""
        return self.positives.cumsum(0)

    @property
    def false_positives(self) -> Tensor:
        """Negatives at or above each group's score."""
        return self.negatives_above + self.negatives


def positive_groups(chunks: Sequence[Tensor], positive_index: Tensor, positive_weights: Optional[Tensor] = None,
                    block_size: int = DEFAULT_BLOCK_SIZE) -> PositiveGroups:
    """Group the positive items of flat score ``chunks`` by distinct score and count the items around them.

    ``positive_index``: ascending flat positions (over the concatenated chunks) of the positives;
    ``positive_weights``: optional per-positive weights, summed per group.
    """
    dtype = torch.float64 if any(key_dtype(c.dtype) == torch.float64 for c in chunks) else torch.float32
    total = sum(chunk.numel() for chunk in chunks)
    if positive_index.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=chunks[0].device)
        return PositiveGroups(empty.to(dtype), empty, empty, empty, None if positive_weights is None else empty.double(),
                              0, total)
    scores = _take_flat(chunks, positive_index, dtype)
    scores, order = torch.sort(scores, descending=True)
    last = torch.ones_like(scores, dtype=torch.bool)
    torch.ne(scores[1:], scores[:-1], out=last[:-1])
    ends = last.nonzero().squeeze(1)
    through = ends + 1
    positives = torch.diff(through, prepend=through.new_zeros(1))
    greater, equal = count_greater_equal(chunks, scores[ends], block_size)
    weights = None
    if positive_weights is not None:
        summed = positive_weights.to(scores.device, torch.float64)[order].cumsum(0)[ends]
        weights = torch.diff(summed, prepend=summed.new_zeros(1))
    num_positives = int(positive_index.numel())
    return PositiveGroups(scores=scores[ends], positives=positives, negatives=equal - positives,
                          negatives_above=greater - (through - positives), weights=weights,
                          num_positives=num_positives, num_negatives=total - num_positives)


def ranking_metrics(groups: PositiveGroups) -> RankingMetrics:
    """AUROC, AP and F1-max from the positive groups of a ranking."""
    num_positives, num_negatives = groups.num_positives, groups.num_negatives
    if num_positives == 0 or num_negatives == 0:
        return RankingMetrics(NOT_APPLICABLE, NOT_APPLICABLE, NOT_APPLICABLE, NOT_APPLICABLE)
    tp, fp = groups.true_positives, groups.false_positives
    twice_area = int((groups.positives * (2 * (num_negatives - fp) + groups.negatives)).sum())
    predicted = (tp + fp).double()
    precision_sum = float((groups.positives.double() * tp / predicted).sum())
    f1 = 2.0 * tp.double() / (predicted + num_positives)
    best = int(f1.argmax())
    return RankingMetrics(auroc=twice_area / (2 * num_positives * num_negatives),
                          average_precision=precision_sum / num_positives, f1_max=float(f1[best]),
                          f1_threshold=float(groups.scores[best]))


def binary_ranking_metrics(scores: Tensor, labels: Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> RankingMetrics:
    """AUROC, AP and F1-max of ``scores`` (higher = more anomalous) against binary ``labels``.

    One sort serves all three. Scores must be finite; labels are bool or 0/1 of the same size.
    """
    scores = as_scores(scores)
    labels = as_binary(labels, "labels").reshape(-1).to(scores.device)
    if labels.numel() != scores.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if scores.numel() == 0:
        raise ValueError("scores are empty")
    return ranking_metrics(positive_groups([scores], labels.nonzero().squeeze(1), block_size=block_size))


def binary_auroc(scores: Tensor, labels: Tensor) -> float:
    """Area under the ROC curve, equal to ``sklearn.metrics.roc_auc_score``; NaN if one class is absent."""
    return binary_ranking_metrics(scores, labels).auroc


def binary_average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision, equal to ``sklearn.metrics.average_precision_score``; NaN if one class is absent."""
    return binary_ranking_metrics(scores, labels).average_precision


def binary_f1_max(scores: Tensor, labels: Tensor) -> float:
    """Best F1 over all thresholds of the precision-recall curve; NaN if one class is absent."""
    return binary_ranking_metrics(scores, labels).f1_max


def binary_f1_max_threshold(scores: Tensor, labels: Tensor) -> Tuple[float, float]:
    """(F1-max, threshold reaching it): ``scores >= threshold`` is the best F1 decision; NaN if one
    class is absent."""
    metrics = binary_ranking_metrics(scores, labels)
    return metrics.f1_max, metrics.f1_threshold


def is_applicable(value: Optional[float]) -> bool:
    """False for the "not applicable" marker (NaN or None)."""
    return value is not None and not math.isnan(value)


def _take_flat(chunks: Sequence[Tensor], index: Tensor, dtype: torch.dtype) -> Tensor:
    """Scores at ascending flat positions ``index`` of the concatenated chunks."""
    parts = []
    offset = 0
    index = index.to(chunks[0].device)
    for chunk in chunks:
        first, last = torch.searchsorted(index, index.new_tensor([offset, offset + chunk.numel()])).tolist()
        parts.append(chunk.reshape(-1)[index[first:last] - offset].to(dtype))
        offset += chunk.numel()
    return torch.cat(parts)
