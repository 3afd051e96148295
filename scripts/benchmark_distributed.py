"""Scaling of evaluation and training under torchrun: images/s with 1 and with N processes, one run.

The script launches itself with ``torchrun --nproc_per_node K`` for each K in ``--processes``
on a synthetic dataset it generates, and prints images/s and the speed-up over one process:

* evaluation: ``engine.evaluation.evaluate`` (sharded scoring, per-class metric owners);
* training: one AnomalyCLIP epoch without the feature cache (every step runs the backbone).

On the CPU the cores are divided among the processes (``OMP_NUM_THREADS``), so the comparison
is at equal hardware. Default: the tiny random backbone; ``--model ViT-L-14-336 --image-size
518 --device cuda`` gives the real shapes (random weights: speed does not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    from anomaly_clip.clip.backbone import BackboneConfig, load_backbone
    from anomaly_clip.data.dataset import AnomalyDataset
    from anomaly_clip.data.formats import load_samples
    from anomaly_clip.engine.distributed import barrier, get_world_size, init_distributed, is_main_process
    from anomaly_clip.engine.evaluation import evaluate
    from anomaly_clip.engine.training import seed_everything
    from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
    from anomaly_clip import TrainConfig, fit
    from anomaly_clip.methods.anomalyclip import AnomalyCLIPTraining

    device = init_distributed(args.device)
    seed_everything(0)
    backbone = load_backbone(BackboneConfig(model_name=args.model, pretrained=None, random_init=True,
                                            image_size=args.image_size), device)
    detector = AnomalyCLIP(backbone, AnomalyCLIPConfig(features_list=tuple(args.features_list)))
    dataset = AnomalyDataset(load_samples(args.data), args.data, image_size=args.image_size)

    def timed(function) -> float:
        barrier()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        barrier()
        return time.perf_counter() - start

    def evaluation():
        evaluate(detector, dataset, batch_size=args.batch_size, num_workers=args.num_workers, progress=False)

    def training():
        fit(detector, dataset, TrainConfig(
            save_path=str(Path(args.output).parent / "checkpoints"), num_workers=args.num_workers,
            export_official=False, method=AnomalyCLIPTraining(epoch=1, batch_size=args.batch_size,
                                                              feature_cache="off")))

    evaluation()
    evaluate_s = timed(evaluation)
    train_s = timed(training)
    if is_main_process():
        Path(args.output).write_text(json.dumps({
            "processes": get_world_size(), "device": device, "images": len(dataset),
            "evaluation_images_per_s": len(dataset) / evaluate_s, "training_images_per_s": len(dataset) / train_s,
        }))


def launch(args: argparse.Namespace, processes: int, data: str, folder: Path) -> dict:
    output = folder / f"run_{processes}" / "result.json"
    output.parent.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if not args.device.startswith("cuda"):
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // processes))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()),
               "--worker", "--data", data, "--output", str(output), "--model", args.model,
               "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--device", args.device,
               "--num-workers", str(args.num_workers), "--features-list", *map(str, args.features_list)]
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{processes}-process run failed:\n{finished.stderr[-4000:]}")
    result = json.loads(output.read_text())
    result["threads"] = env.get("OMP_NUM_THREADS", "-")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--model", default="anomaly-clip-tiny")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation batch per process; global training batch")
    parser.add_argument("--images-per-class", type=int, default=24,
                        help="synthetic test images per class (2 classes)")
    parser.add_argument("--features-list", type=int, nargs="+", default=[12, 24])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (one GPU per process)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from anomaly_clip.data.synthetic import generate_synthetic_dataset

    with tempfile.TemporaryDirectory() as folder:
        half = args.images_per_class // 2
        data = generate_synthetic_dataset(Path(folder) / "data", classes=["fabric", "washer"], n_train=0,
                                          n_test_normal=half, n_test_anomalous=args.images_per_class - half,
                                          image_size=args.image_size, seed=0)
        results = [launch(args, processes, str(data), Path(folder)) for processes in args.processes]
    base = results[0]
    rows = [[r["processes"], r["threads"], f"{r['evaluation_images_per_s']:.1f}",
             f"{r['evaluation_images_per_s'] / base['evaluation_images_per_s']:.2f}x",
             f"{r['training_images_per_s']:.1f}", f"{r['training_images_per_s'] / base['training_images_per_s']:.2f}x"]
            for r in results]
    print(f"device={args.device} model={args.model} image_size={args.image_size} images={base['images']} "
          f"batch={args.batch_size} cpu_count={os.cpu_count()}")
    print(tabulate(rows, headers=["processes", "threads each", "evaluation images/s", "speed-up",
                                  "training images/s", "speed-up"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
