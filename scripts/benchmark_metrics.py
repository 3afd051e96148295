"""Pixel metrics speed, official-style path vs ours, measured side by side in one run.

Data: one MVTec-sized synthetic class (default 150 images of 518 x 518, seeded): a third of
the images normal, the rest with many defect regions of varied size and shape; maps are
37 x 37 patch scores upsampled bilinearly and smoothed with a Gaussian (sigma 4), like
AnomalyCLIP's, higher inside defects.

official-style: ``sklearn.metrics.roc_auc_score`` on all pixels, and AnomalyCLIP's AUPRO as a
    plain loop over its 200 thresholds, labelling the masks and visiting every region per
    threshold.
ours: ``aupro(..., "compat")`` (the same 200-threshold value, by binning) and
    ``pixel_metrics(..., aupro="exact")`` (exact AUROC, AP, F1-max and MVTec AUPRO from one sort).

``compat ratio`` = loop time / our compat time. ``exact ratio`` = (sklearn AUROC + loop) time /
our exact pixel metrics time. Our paths run ``--repeats`` times (median time counts); the
official-style ones once. The exact AUPRO is also checked against a direct MVTec-style
computation (full argsort of every pixel), timed for information only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, roc_auc_score
from tabulate import tabulate

from anomaly_clip.metrics import aupro, pixel_metrics

COMPAT_TOLERANCE = 1e-6
EXACT_TOLERANCE = 1e-9


def synthetic_class(images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(maps float32 [N, S, S], masks bool [N, S, S]) with many defect regions."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    rows, cols = np.ogrid[:size, :size]
    for index in range(images):
        if index % 3 == 0:
            continue
        for _ in range(int(rng.integers(1, 12))):
            radius = float(rng.uniform(0.005, 0.08)) * size
            centre = rng.uniform(0, size, 2)
            stretch = rng.uniform(0.3, 1.0)
            angle = rng.uniform(0, np.pi)
            dy, dx = rows - centre[0], cols - centre[1]
            along = dx * np.cos(angle) + dy * np.sin(angle)
            across = -dx * np.sin(angle) + dy * np.cos(angle)
            masks[index] |= (along / radius) ** 2 + (across / (stretch * radius)) ** 2 <= 1.0
    grid = max(size // 14, 2)
    patches = torch.from_numpy(rng.normal(0.35, 0.08, (images, 1, grid, grid)).astype(np.float32))
    maps = F.interpolate(patches, size=(size, size), mode="bilinear", align_corners=False)[:, 0].numpy()
    maps += 0.45 * masks * rng.uniform(0.2, 1.0, (images, 1, 1)).astype(np.float32)
    maps += rng.normal(0.0, 0.03, maps.shape).astype(np.float32)
    maps = ndimage.gaussian_filter(maps, sigma=(0, 4, 4))
    return maps.astype(np.float32), masks


def official_style_aupro(masks: np.ndarray, maps: np.ndarray, steps: int = 200, fpr_limit: float = 0.3) -> float:
    """AnomalyCLIP's 200-threshold AUPRO as a plain loop over thresholds, images and regions."""
    low, high = maps.min(), maps.max()
    normal = ~masks
    fprs, pros = [], []
    for threshold in np.arange(low, high, (high - low) / steps):
        predicted = maps > threshold
        overlaps = []
        for prediction, mask in zip(predicted, masks):
            for region in measure.regionprops(measure.label(mask, connectivity=2)):
                covered = prediction[region.coords[:, 0], region.coords[:, 1]].sum()
                overlaps.append(covered / region.area)
        fprs.append(np.logical_and(normal, predicted).sum() / normal.sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs < fpr_limit
    kept = fprs[keep]
    return auc((kept - kept.min()) / (kept.max() - kept.min()), pros[keep])


def direct_exact_aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """MVTec-style exact AUPRO: argsort every pixel, cumulate FPR and PRO steps, integrate to the limit."""
    regions = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions[index] = np.where(labelled > 0, labelled + offset, 0)
        offset += count
    areas = np.bincount(regions.ravel())
    step_pro = np.where(regions > 0, 1.0 / areas[regions], 0.0).ravel() / offset
    step_fpr = (regions == 0).ravel() / (regions == 0).sum()
    scores = maps.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    scores, fpr, pro = scores[order], np.cumsum(step_fpr[order]), np.cumsum(step_pro[order])
    last = np.append(scores[1:] != scores[:-1], True)
    fpr, pro = np.concatenate([[0.0], fpr[last]]), np.concatenate([[0.0], pro[last]])
    inside = fpr <= fpr_limit
    area = np.sum((fpr[inside][1:] - fpr[inside][:-1]) * (pro[inside][1:] + pro[inside][:-1]) / 2)
    cross = int(inside.sum())
    x0, x1, y0, y1 = fpr[cross - 1], fpr[cross], pro[cross - 1], pro[cross]
    at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
    return (area + (fpr_limit - x0) * (y0 + at_limit) / 2) / fpr_limit


def timed(function, repeats: int = 1):
    """``(value, seconds)``; with repeats, the median time (our paths take about a second, so a
    stray spike of load on a shared machine would otherwise decide the ratio)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        times.append(time.perf_counter() - start)
    return value, statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of our paths; the median time counts")
    args = parser.parse_args()

    maps, masks = synthetic_class(args.images, args.size, args.seed)
    maps_tensor, masks_tensor = torch.from_numpy(maps), torch.from_numpy(masks)
    regions = sum(ndimage.label(mask, structure=np.ones((3, 3)))[1] for mask in masks)
    sys.stdout.write(f"{args.images} images of {args.size} x {args.size} ({maps.size / 1e6:.1f} M pixels, "
                     f"{masks.mean():.1%} anomalous, {regions} defect regions), seed {args.seed}, "
                     f"{torch.get_num_threads()} threads; ours: median of {args.repeats} runs\n")

    sk_auroc, sk_time = timed(lambda: roc_auc_score(masks.ravel(), maps.ravel()))
    loop_aupro, loop_time = timed(lambda: official_style_aupro(masks, maps))
    our_compat, compat_time = timed(lambda: aupro(maps_tensor, masks_tensor, definition="compat"), args.repeats)
    ours, exact_time = timed(lambda: pixel_metrics(maps_tensor, masks_tensor, aupro="exact"), args.repeats)
    direct_exact, direct_time = timed(lambda: direct_exact_aupro(masks, maps))

    rows = [
        ["pixel AUROC", f"{sk_auroc:.12f}", f"{sk_time:.3f}", f"{ours.auroc:.12f}", f"{exact_time:.3f} (shared)",
         f"{abs(sk_auroc - ours.auroc):.1e}"],
        ["pixel AUPRO compat", f"{loop_aupro:.12f}", f"{loop_time:.3f}", f"{our_compat:.12f}",
         f"{compat_time:.3f}", f"{abs(loop_aupro - our_compat):.1e}"],
        ["pixel AUPRO exact", f"{direct_exact:.12f}", f"{direct_time:.3f} (argsort)", f"{ours.aupro:.12f}",
         f"{exact_time:.3f} (shared)", f"{abs(direct_exact - ours.aupro):.1e}"],
        ["pixel AP / F1-max", "", "", f"{ours.average_precision:.6f} / {ours.f1_max:.6f}",
         f"{exact_time:.3f} (shared)", ""],
    ]
    sys.stdout.write(tabulate(rows, headers=["metric", "official-style", "s", "ours", "s", "|diff|"],
                              tablefmt="pipe", disable_numparse=True) + "\n\n")

    equal = (abs(sk_auroc - ours.auroc) <= EXACT_TOLERANCE and abs(loop_aupro - our_compat) <= COMPAT_TOLERANCE
             and abs(direct_exact - ours.aupro) <= EXACT_TOLERANCE)
    compat_ratio = loop_time / compat_time
    exact_ratio = (sk_time + loop_time) / exact_time
    sys.stdout.write(f"compat ratio: {compat_ratio:.1f}  (200-threshold loop {loop_time:.2f} s / ours "
                     f"{compat_time:.3f} s; target >= 50)\n")
    sys.stdout.write(f"exact ratio: {exact_ratio:.1f}  (sklearn AUROC + loop {sk_time + loop_time:.2f} s / "
                     f"ours AUROC+AP+F1+exact AUPRO {exact_time:.3f} s; target >= 10)\n")
    sys.stdout.write(f"values equal: {'yes' if equal else 'NO'} (AUROC and exact AUPRO to {EXACT_TOLERANCE:g}, "
                     f"compat AUPRO to {COMPAT_TOLERANCE:g})\n")
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
