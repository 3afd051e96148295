"""How far a mixed-precision training run drifts from float32: same data, same start, one run each.

Trains AnomalyCLIP (or AA-CLIP's two stages) on the synthetic set twice from the same initial
state and data order, once in float32 (the official precision) and once under autocast
(``--precision bf16`` by default), then prints per-epoch losses side by side and, for every trained
tensor, the relative L2 and the largest absolute difference of the parameters.

Default: the tiny random backbone on the CPU (bf16 autocast runs on CPUs too). On a GPU,
``--model ViT-L-14-336 --image-size 518`` gives the real shapes (random weights unless ``--weights``).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from tabulate import tabulate

from anomaly_clip.clip.backbone import BackboneConfig, load_backbone
from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.precision import PRECISIONS
from anomaly_clip.methods.aaclip import AAClipConfig, AAClipDetector
from anomaly_clip.methods.aaclip.training import AAClipTrainSettings, train_image_stage, train_text_stage
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig
from anomaly_clip.methods.anomalyclip.training import train_anomalyclip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("anomalyclip", "aaclip"), default="anomalyclip")
    parser.add_argument("--model", default="anomaly-clip-tiny")
    parser.add_argument("--weights", default=None, help="local CLIP weights (else random)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--precision", choices=[p for p in PRECISIONS if p != "fp32"], default="bf16")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images-per-class", type=int, default=8, help="synthetic test images per class")
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def train(args: argparse.Namespace, dataset, precision: str, folder: Path):
    """(history, trained tensors) of one run from the fixed initial state (seed 0)."""
    method_defaults = AnomalyCLIP if args.method == "anomalyclip" else AAClipDetector
    config = method_defaults.default_backbone_config()
    overrides = dict(model_name=args.model, image_size=args.image_size)
    if args.weights:
        overrides.update(weights_path=args.weights)
    else:
        overrides.update(random_init=True)
    backbone = load_backbone(BackboneConfig(**{**config.to_dict(), **overrides}), args.device)
    torch.manual_seed(0)
    if args.method == "anomalyclip":
        detector = AnomalyCLIP(backbone, AnomalyCLIPConfig(features_list=(6, 12, 18, 24)))
    else:
        detector = AAClipDetector(backbone, AAClipConfig(dataset="synthetic"))
    start = {name: p.detach().clone() for name, p in detector.named_parameters() if p.requires_grad}
    if args.method == "anomalyclip":
        history = train_anomalyclip(detector, dataset, folder, epochs=args.epochs, batch_size=args.batch_size,
                                    seed=0, feature_cache="off", precision=precision, export_official=False,
                                    save_freq=args.epochs).history
    else:
        settings = AAClipTrainSettings(text_epoch=args.epochs, image_epoch=args.epochs,
                                       text_batch_size=args.batch_size, image_batch_size=args.batch_size, seed=0)
        history = [{"stage": "text", **h} for h in train_text_stage(
            detector, dataset, folder, settings, precision=precision, export_official=False).history]
        history += [{"stage": "image", **h} for h in train_image_stage(
            detector, dataset, folder, settings, precision=precision, export_official=False).history]
    # tensors the run changed (AnomalyCLIP's learner also holds never-used official projections)
    trained = {name: p.detach().float().cpu() for name, p in detector.named_parameters()
               if p.requires_grad and not torch.equal(p, start[name])}
    return history, trained


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = generate_synthetic_dataset(Path(scratch) / "data", n_train=0, n_test_normal=args.images_per_class,
                                          n_test_anomalous=args.images_per_class, seed=0)
        samples = load_samples(str(root), split="test")
        dataset = AnomalyDataset(samples, str(root), image_size=args.image_size)
        reference, reference_weights = train(args, dataset, "fp32", Path(scratch) / "fp32")
        mixed, mixed_weights = train(args, dataset, args.precision, Path(scratch) / args.precision)
    rows = []
    for ours, theirs in zip(reference, mixed):
        for name, value in ours.items():
            if name in ("epoch", "stage"):
                continue
            rows.append([ours.get("stage", ""), ours["epoch"], name, value, theirs[name],
                         abs(theirs[name] - value) / max(abs(value), 1e-12)])
    print(f"{args.method} on {len(samples)} synthetic images, {args.model} at {args.image_size} px, "
          f"{args.epochs} epoch(s): float32 vs {args.precision}")
    print(tabulate(rows, headers=["stage", "epoch", "loss", "fp32", args.precision, "relative diff"],
                   floatfmt=".6g"))
    rows = []
    for name, value in reference_weights.items():
        if name not in mixed_weights:
            rows.append([name, "unchanged in the mixed-precision run", "", ""])
            continue
        difference = mixed_weights[name] - value
        rows.append([name, float(difference.norm() / value.norm().clamp_min(1e-12)), float(difference.abs().max()),
                     float(value.abs().max())])
    print(tabulate(rows, headers=["parameter", "relative L2", "max |diff|", "max |fp32 value|"], floatfmt=".3g"))


if __name__ == "__main__":
    main()
