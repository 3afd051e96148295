"""AnomalyCLIP speed, naive path vs ours, measured side by side in one run.

naive: frozen image features recomputed every training step; inference one image at a time,
       smoothing on the host with scipy; float32.
ours:  cached frozen features (a training step touches only the prompt learner and the loss);
       batched inference with smoothing on the device; mixed precision on GPU.

Default: the tiny random backbone on the CPU. ``--model ViT-L-14-336 --image-size 518`` gives the
real shapes (random weights: speed does not depend on them).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import scipy.ndimage
import torch
from tabulate import tabulate

from anomaly_clip.clip.backbone import BackboneConfig, load_backbone
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.engine.precision import autocast


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device, repeats: int) -> float:
    """Mean seconds per call after one warm-up call."""
    function()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="anomaly-clip-tiny")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=16, help="images scored per inference measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per path")
    parser.add_argument("--features-list", type=int, nargs="+", default=[24])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    backbone = load_backbone(BackboneConfig(model_name=args.model, pretrained=None, random_init=True,
                                            image_size=args.image_size), args.device)
    device = backbone.device
    config = AnomalyCLIPConfig(features_list=tuple(args.features_list))
    ours = AnomalyCLIP(backbone, config)
    naive = AnomalyCLIP(backbone, replace(config, sigma=0.0))
    naive.load_trainable_state_dict(ours.trainable_state_dict())
    torch.manual_seed(0)
    size = args.image_size
    images = torch.randn(args.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 2, (args.batch_size,), device=device)
    masks = (torch.rand(args.batch_size, 1, size, size, device=device) > 0.9).float()
    optimizer = torch.optim.Adam(ours.prompt_learner.parameters(), lr=1e-3, betas=(0.5, 0.999))

    def train_step(features=None, precision="fp32"):
        with autocast(device, precision):
            feats = features if features is not None else ours.image_features(images)
            loss = ours.glocal_loss(feats, labels, masks)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    ours.train()
    naive_step = timed(lambda: train_step(None, "fp32"), device, args.steps)
    with autocast(device, "auto"):
        cached = ours.image_features(images)
    ours_step = timed(lambda: train_step(cached, "auto"), device, args.steps)

    ours.eval()
    naive.eval()
    pool = torch.randn(args.images, 3, size, size, device=device)

    def naive_inference():
        for image in pool:
            prediction = naive(image[None])
            maps = prediction.maps.cpu().numpy()
            np.stack([scipy.ndimage.gaussian_filter(m, sigma=config.sigma) for m in maps])

    def ours_inference():
        with autocast(device, "auto"):
            for start in range(0, args.images, args.batch_size):
                ours(pool[start:start + args.batch_size])

    naive_infer = timed(naive_inference, device, 1)
    ours_infer = timed(ours_inference, device, 1)
    rows = [
        ["training step (s)", f"{naive_step:.4f}", f"{ours_step:.4f}", f"{naive_step / ours_step:.1f}x"],
        ["inference (images/s)", f"{args.images / naive_infer:.2f}", f"{args.images / ours_infer:.2f}",
         f"{naive_infer / ours_infer:.1f}x"],
    ]
    print(f"device={device} model={args.model} image_size={size} batch={args.batch_size} "
          f"features_list={args.features_list}")
    print(tabulate(rows, headers=["", "naive", "ours", "ratio"], tablefmt="pipe"))


if __name__ == "__main__":
    main()
