"""Few-shot reference scoring, full similarity matrix vs our blockwise search, side by side.

Data: a K-shot bank of random unit features (K x patches rows of ``--dim``) and a batch of test
patches, sized by default like ViT-L/14 at 518 px (1369 patches, 768 dims) with 64 references
and 8 test images: what one layer of one class costs.

full: ``(queries @ bank.T).max(1)`` in one matmul -- the straightforward way, whose
    query-by-bank matrix (3.8 GB here) is the peak.
ours: :func:`anomaly_clip.engine.references.nearest_distances` in blocks of at most
    ``--max-elements`` entries (default 16 Mi, 64 MiB).

Reported: median time and, on CUDA, peak memory allocated beyond the inputs, plus the ratios
full / ours. Both results are checked equal. The full path is skipped (reported as such) when
its matrix does not fit.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from anomaly_clip.engine.references import DEFAULT_MAX_ELEMENTS, nearest_distances


def full_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return (1 - (queries @ bank.T).amax(dim=1)).clamp_(0.0, 2.0)


def measure(function, queries: torch.Tensor, bank: torch.Tensor, repeats: int):
    """(median seconds, peak extra bytes or None, result)."""
    cuda = queries.device.type == "cuda"
    times, peak, result = [], None, None
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        result = function(queries, bank)
        if cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="test images per batch")
    parser.add_argument("--patches", type=int, default=1369, help="patches per image (37 x 37 at 518 px)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--max-elements", type=int, default=DEFAULT_MAX_ELEMENTS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator(device="cpu").manual_seed(0)
    bank = F.normalize(torch.randn(args.shots * args.patches, args.dim, generator=generator), dim=-1).to(device)
    queries = F.normalize(torch.randn(args.batch * args.patches, args.dim, generator=generator), dim=-1).to(device)

    def ours(q: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return nearest_distances(q, b, args.max_elements)

    rows = []
    ours_time, ours_peak, ours_result = measure(ours, queries, bank, args.repeats)
    matrix_bytes = queries.shape[0] * bank.shape[0] * 4
    try:
        full_time, full_peak, full_result = measure(full_distances, queries, bank, args.repeats)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
        full_time = full_peak = full_result = None
        print(f"full matrix ({matrix_bytes / 2 ** 30:.1f} GiB) failed: {error}", file=sys.stderr)
    if full_result is not None:
        difference = float((full_result - ours_result).abs().max())
        if difference > 1e-5:
            raise SystemExit(f"results differ by {difference}")

    def mib(value):
        return "n/a (CPU)" if value is None else f"{value / 2 ** 20:.0f}"

    rows.append(["full matrix", f"{full_time:.3f}" if full_time else "failed", mib(full_peak)])
    rows.append([f"ours (blocks <= {args.max_elements} entries)", f"{ours_time:.3f}", mib(ours_peak)])
    ratios = ["full / ours", f"{full_time / ours_time:.2f}" if full_time else "-",
              f"{full_peak / ours_peak:.1f}" if full_peak and ours_peak else "-"]
    rows.append(ratios)
    print(f"{args.shots}-shot bank of {bank.shape[0]} x {args.dim}, {queries.shape[0]} query patches, "
          f"{device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(tabulate(rows, headers=["path", "median s", "peak extra MiB"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
