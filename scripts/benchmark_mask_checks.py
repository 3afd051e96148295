"""Cost of the inverted-mask check, measured side by side with the metrics it runs beside.

When a class's metrics are computed, :class:`anomaly_clip.metrics.AnomalyEvaluator` first sums
the boolean masks of the class's anomalous images to warn about masks that look inverted. This
script times ``AnomalyEvaluator.compute()`` on one synthetic MVTec-like class (the data of
``benchmark_metrics.py``) with the check and with it replaced by a no-op, alternating the two
in one run, and prints the median times and their ratio (the check's share of the work).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from tabulate import tabulate

from anomaly_clip.metrics import AnomalyEvaluator
from anomaly_clip.metrics import evaluator as evaluator_module
from benchmark_metrics import synthetic_class


def compute_seconds(maps: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, aupro: str) -> float:
    evaluator = AnomalyEvaluator(metrics="pixel-level", aupro=aupro)
    for start in range(0, len(labels), 8):
        part = slice(start, start + 8)
        evaluator.update(["class"] * len(labels[part]), labels[part], labels[part].float(), maps[part], masks[part])
    begin = time.perf_counter()
    evaluator.compute()
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=518)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aupro", default="exact", help="AUPRO definition of the metrics timed beside the check")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each variant; the median time counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps the timing steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    maps, masks = synthetic_class(args.images, args.size, args.seed)
    maps, masks = torch.from_numpy(maps), torch.from_numpy(masks)
    labels = masks.flatten(1).any(dim=1)
    check = evaluator_module._warn_if_masks_look_inverted
    times = {"with the check": [], "without": []}
    for _ in range(args.repeats):
        evaluator_module._warn_if_masks_look_inverted = check
        times["with the check"].append(compute_seconds(maps, masks, labels, args.aupro))
        evaluator_module._warn_if_masks_look_inverted = lambda *unused: None
        times["without"].append(compute_seconds(maps, masks, labels, args.aupro))
    evaluator_module._warn_if_masks_look_inverted = check
    alone = []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        check("class", list(labels.split(8)), list(masks.split(8)))
        alone.append(time.perf_counter() - begin)
    with_check, without = (statistics.median(values) for values in times.values())
    print(f"{args.images} images of {args.size} x {args.size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} runs")
    print(tabulate([["compute() with the check", f"{with_check:.3f}"], ["compute() without", f"{without:.3f}"],
                    ["the check alone", f"{statistics.median(alone):.4f}"]], headers=["", "seconds"]))
    print(f"ratio with / without: {with_check / without:.3f}; "
          f"check alone / compute() without: {statistics.median(alone) / without:.4f}")


if __name__ == "__main__":
    main()
