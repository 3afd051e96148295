"""Cost of predict's per-image outputs: scoring alone vs scoring with ``--overlays --save-maps npz``,
this checkout side by side with another one (``--before``, e.g. a worktree of an older commit).

Every variant runs ``python -m anomaly_clip predict`` as a user does (start-up included), on the
same folder of photo-sized images and the same tiny checkpoint, one after the other in this run;
the table gives seconds, images/s, the output size and the ratio to scoring alone of the same
checkout::

    git worktree add /tmp/before 95ac4f7
    python scripts/benchmark_outputs.py --before /tmp/before --images 200
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image
from tabulate import tabulate

HERE = Path(__file__).resolve().parents[1]
VARIANTS = {
    "scoring only": [],
    "--overlays --save-maps npz": ["--overlays", "--save-maps", "npz"],
    "  ... --overlay_format png": ["--overlays", "--save-maps", "npz", "--overlay_format", "png"],
    "  ... --map_dtype float16": ["--overlays", "--save-maps", "npz", "--map_dtype", "float16"],
}
OLD_VARIANTS = ("scoring only", "--overlays --save-maps npz")


def make_images(folder: Path, count: int, size: int) -> None:
    """Textured photo-like images with a blemish, so that encoders see realistic content."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    y, x = np.mgrid[0:size, 0:size]
    for index in range(count):
        base = 110 + 40 * np.sin(x / (6 + index % 5)) * np.cos(y / 9)
        image = np.clip(base[..., None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        cx, cy = rng.integers(20, size - 20, 2)
        image[cy - 6:cy + 6, cx - 10:cx + 10] = (200, 60, 40)
        Image.fromarray(image).save(folder / f"image_{index:05d}.png")


def make_checkpoint(path: Path) -> None:
    import torch

    import anomaly_clip
    from anomaly_clip.clip.config import BackboneConfig

    torch.manual_seed(0)
    detector = anomaly_clip.create_detector("anomalyclip", backbone=BackboneConfig().tiny(), device="cpu")
    anomaly_clip.save_checkpoint(path, detector)


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def run_predict(checkout: Path, checkpoint: Path, images: Path, output: Path, flags: List[str],
                batch_size: int, workers: int) -> Tuple[float, int, int]:
    command = [sys.executable, "-m", "anomaly_clip", "predict", "--checkpoint_path", str(checkpoint), "--input",
               str(images), "--save_path", str(output), "--device", "cpu", "--batch_size", str(batch_size),
               "--num_workers", str(workers), *flags]
    environment = dict(os.environ, PYTHONPATH=str(checkout), CUDA_VISIBLE_DEVICES="")
    start = time.perf_counter()
    # run outside any checkout: `python -m` puts the working folder first on the path
    completed = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=output.parent)
    seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-3000:]}")
    return seconds, folder_size(output / "maps"), folder_size(output / "overlays")


def writer_threads_table(checkpoint: Path, images: Path, work: Path, batch_size: int, workers: int) -> List[list]:
    """In one process: predict with overlays and npz maps, files written in the scoring thread (0)
    or by 2 background threads, on the CPU (what :func:`writer_threads` decides from)."""
    import anomaly_clip
    from anomaly_clip.engine.inference import expand_inputs, predict_files
    from anomaly_clip.engine.outputs import OutputWriter, PredictionFiles, common_root
    from anomaly_clip.engine.visualization import ColourScale

    model = anomaly_clip.load(checkpoint, device="cpu")
    paths = expand_inputs([images])
    predict_files(model, paths[:batch_size], batch_size=batch_size, progress=False)
    rows, base = [], None
    for threads in (0, 2):
        start = time.perf_counter()
        with OutputWriter(threads) as writer:
            files = PredictionFiles(work / f"threads_{threads}", common_root(paths), writer, save_maps="npz",
                                    overlays=True, scale=ColourScale((0.0, 1.0)))
            predict_files(model, paths, batch_size=batch_size, num_workers=workers, sink=files, keep_originals=True,
                          progress=False)
            writer.close()
        seconds = time.perf_counter() - start
        base = base or seconds
        rows.append([threads, f"{seconds:.1f}", f"{len(paths) / seconds:.1f}", f"{seconds / base:.2f}x"])
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to compare with (e.g. a worktree of the base)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=250, help="side of the images in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        make_images(work / "images", args.images, args.size)
        make_checkpoint(work / "model.pth")
        checkouts = [("this checkout", HERE, list(VARIANTS))]
        if args.before:
            checkouts.insert(0, (f"before ({args.before.name})", args.before.resolve(), list(OLD_VARIANTS)))
        threads = writer_threads_table(work / "model.pth", work / "images", work, args.batch_size, args.num_workers)
        for label, checkout, names in checkouts:
            alone = None
            for number, name in enumerate(names):
                seconds, maps, overlays = run_predict(checkout, work / "model.pth", work / "images",
                                            work / f"out_{label[:6]}_{number}", VARIANTS[name], args.batch_size,
                                            args.num_workers)
                alone = alone or seconds
                rows.append([label, name, f"{seconds:.1f}", f"{args.images / seconds:.1f}", f"{seconds / alone:.2f}x",
                             f"{(maps + overlays) / 1e6:.1f} MB", f"{maps / args.images / 1e3:.0f} kB",
                             f"{overlays / args.images / 1e3:.0f} kB"])
    print(f"{args.images} images of {args.size} x {args.size} px, tiny backbone (112 px) on the CPU, batch "
          f"{args.batch_size}, {args.num_workers} loader workers, {os.cpu_count()} CPUs; each run is a whole "
          "`anomaly-clip predict` (start-up included)")
    print(tabulate(rows, headers=["code", "outputs", "seconds", "images/s", "vs scoring only", "written",
                                  "map / image", "overlay / image"], tablefmt="github"))
    print("\nOverlays and npz maps in one process on the CPU, by writer threads (0 = in the scoring thread):")
    print(tabulate(threads, headers=["writer threads", "seconds", "images/s", "vs 0"], tablefmt="github"))


if __name__ == "__main__":
    main()
