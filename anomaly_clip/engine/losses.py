"""Segmentation and classification losses shared by both methods.

Focal and Dice follow the official implementations exactly (label clamping, ``+ smooth``
inside the log, per-image Dice averaged over the batch) because released checkpoints were
trained with them and loss values are compared in tests.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def focal_loss(probabilities: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on class probabilities (B, C, H, W) against integer labels (B, H, W).

    The one-hot target is clamped to [smooth / (C - 1), 1 - smooth] and ``smooth`` is added to
    the probability of the true class before the log; the result is the mean over pixels.
    """
    if probabilities.ndim != 4:
        raise ValueError(f"expected probabilities (B, C, H, W), got {tuple(probabilities.shape)}")
    num_classes = probabilities.shape[1]
    target = target.reshape(target.shape[0], *probabilities.shape[2:]).long()
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probabilities.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    true_probability = (one_hot * probabilities).sum(dim=1) + smooth
    return (-(1 - true_probability).pow(gamma) * true_probability.log()).mean()


def dice_loss(prediction: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over images of the soft Dice coefficient (prediction and target (B, ...))."""
    batch = target.shape[0]
    prediction = prediction.reshape(batch, -1)
    target = target.reshape(batch, -1).to(prediction.dtype)
    intersection = (prediction * target).sum(dim=1)
    coefficient = (2 * intersection + smooth) / (prediction.sum(dim=1) + target.sum(dim=1) + smooth)
    return 1 - coefficient.mean()


def segmentation_loss(probabilities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Focal + Dice(abnormal, mask) + Dice(normal, 1 - mask) for one (B, 2, H, W) map."""
    mask = mask.reshape(mask.shape[0], *probabilities.shape[2:])
    return (focal_loss(probabilities, mask)
            + dice_loss(probabilities[:, 1], mask)
            + dice_loss(probabilities[:, 0], 1 - mask))


def multi_level_segmentation_loss(level_probabilities: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Sum of :func:`segmentation_loss` over feature levels."""
    if not level_probabilities:
        raise ValueError("no feature levels to compute a segmentation loss on")
    return sum(segmentation_loss(p, mask) for p in level_probabilities)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, 2) normal/abnormal logits against image labels."""
    return F.cross_entropy(logits, labels.long())
