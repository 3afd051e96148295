"""Prediction throughput on one's own files, naive loop vs ``predict_files``, in one run.

naive: one image at a time (read, preprocess, forward, upsample the map to the original size).
ours:  :func:`anomaly_clip.engine.inference.predict_files`, as ``anomaly-clip predict`` runs it:
       batched forward in mixed precision on GPU, parallel reading, maps upsampled on the device.

Both score the synthetic set's test images with the same model (tiny random backbone on the CPU
by default; ``--model ViT-L-14-336 --image-size 518`` for the real shapes, weights do not change
the speed).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
import torch.nn.functional as F
from tabulate import tabulate

from anomaly_clip.clip.backbone import BackboneConfig, load_backbone
from anomaly_clip.data.dataset import load_image
from anomaly_clip.data.imaging import read_rgb
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.inference import expand_inputs, predict_files
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig


def naive(model: AnomalyCLIP, paths) -> list:
    scores = []
    with torch.inference_mode():
        for path in paths:
            height, width = read_rgb(path).size[::-1]
            prediction = model(load_image(path, model.image_size)[None].to(model.device))
            F.interpolate(prediction.maps[:, None], size=(height, width), mode="bilinear").cpu()
            scores.append(float(prediction.scores[0]))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="anomaly-clip-tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images-per-class", type=int, default=8, help="normal and anomalous test images per class")
    parser.add_argument("--source-size", type=int, default=256, help="side of the synthetic images")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = load_backbone(BackboneConfig(model_name=args.model, pretrained=None, random_init=True,
                                            image_size=args.image_size), device=device)
    model = AnomalyCLIP(backbone, AnomalyCLIPConfig(features_list=(6, 12, 18, 24))).eval()
    with tempfile.TemporaryDirectory() as folder:
        root = generate_synthetic_dataset(folder, classes=["fabric", "washer"], n_train=0,
                                          n_test_normal=args.images_per_class,
                                          n_test_anomalous=args.images_per_class, image_size=args.source_size)
        paths = [p for p in expand_inputs([root]) if "ground_truth" not in p.parts]
        naive(model, paths[:2])
        predict_files(model, paths[:2], batch_size=args.batch_size, progress=False)
        start = time.perf_counter()
        naive_scores = naive(model, paths)
        naive_seconds = time.perf_counter() - start
        start = time.perf_counter()
        rows = predict_files(model, paths, batch_size=args.batch_size, num_workers=args.num_workers,
                             progress=False)
        ours_seconds = time.perf_counter() - start
    difference = max(abs(a - r.score) for a, r in zip(naive_scores, rows))
    table = [["naive (one image at a time)", f"{len(paths) / naive_seconds:.1f}", "1.00x"],
             ["predict_files (batched)", f"{len(paths) / ours_seconds:.1f}", f"{naive_seconds / ours_seconds:.2f}x"]]
    print(f"{len(paths)} images of {args.source_size}px, {args.model} at {args.image_size}px on {device}, "
          f"batch {args.batch_size}; largest score difference {difference:.2e}")
    print(tabulate(table, headers=["path", "images/s", "speed-up"], tablefmt="github"))


if __name__ == "__main__":
    main()
