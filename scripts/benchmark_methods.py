"""Inference speed of every registered method side by side, and WinCLIP's batched windows against
a one-window-at-a-time loop, measured in one run.

Each method's detector is built with its default settings on a randomly initialised backbone
(speed does not depend on the weights): by default the tiny test backbone for all methods at
``--image_size``; with ``--real`` each method's own reference backbone and resolution (ViT-L/14-336
at 518 px, WinCLIP's ViT-B/16+ at 240 px), the shapes of the papers' Table 8. Text features are
computed in a warm-up batch and reused, as in evaluation. Reported: images per second of
the forward pass (median over ``--repeats`` timed batches), and for WinCLIP (zero-shot and WinCLIP+ with
``--shots`` references) the same with every window run as its own transformer pass
(``max_window_tokens=1``: the per-window loop), with the ratio batched / loop and the largest
difference between the two outputs.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from tabulate import tabulate

from anomaly_clip import create_detector, list_methods
from anomaly_clip.clip.backbone import BackboneConfig, CLIPBackbone, load_backbone
from anomaly_clip.engine.precision import autocast
from anomaly_clip.engine.registry import find_method


def timed(function: Callable[[], Any], repeats: int, device: torch.device, warm_up: bool = True) -> Tuple[float, Any]:
    """(median seconds of ``function`` over ``repeats`` calls, after one warm-up call unless told
    otherwise; the last call's result)."""
    result = function() if warm_up else None
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def backbone_config(method: str, args: argparse.Namespace) -> BackboneConfig:
    base = find_method(method).detector_class.default_backbone_config()
    if args.real:
        return replace(base, random_init=True, weights_path=None)
    return replace(base, model_name=args.model, pretrained=None, random_init=True, image_size=args.image_size)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list_methods(), choices=list_methods())
    parser.add_argument("--real", action="store_true",
                        help="each method's reference backbone and resolution (random weights) instead of the tiny one")
    parser.add_argument("--model", default="anomaly-clip-tiny", help="backbone of every method without --real")
    parser.add_argument("--image_size", type=int, default=112, help="input size without --real")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--shots", type=int, default=2, help="normal references per class for WinCLIP+")
    parser.add_argument("--precision", default="auto", help="auto: bf16/fp16 autocast on GPU, fp32 on CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbones: Dict[BackboneConfig, CLIPBackbone] = {}
    rows = []
    for method in args.methods:
        config = backbone_config(method, args)
        if config not in backbones:
            backbones[config] = load_backbone(config, device=device)
        detector = create_detector(method, backbone=backbones[config])
        size = detector.image_size
        images = torch.randn(args.batch_size, 3, size, size, device=device)
        names = ["object"] * args.batch_size

        def predict():
            with torch.inference_mode(), autocast(device, args.precision):
                return detector(images, names)

        seconds, _ = timed(predict, args.repeats, device)
        rows.append([method, config.model_name, size, f"{args.batch_size / seconds:.2f}", "", "", ""])
        if method != "winclip":
            continue
        variants = [("winclip (zero-shot)", None)]
        with torch.inference_mode():
            references = detector.reference_features(torch.randn(args.shots, 3, size, size, device=device))
        bank = {"object": {key: torch.nn.functional.normalize(value.reshape(-1, value.shape[-1]).float(), dim=-1)
                           for key, value in references.items()}}
        variants.append((f"winclip+ ({args.shots}-shot)", bank))
        rows.pop()
        for label, state in variants:
            detector.set_references(state)
            detector.config.max_window_tokens = type(detector.config)().max_window_tokens
            batched_seconds, batched = timed(predict, args.repeats, device, warm_up=state is None)
            detector.config.max_window_tokens = 1
            loop_seconds, looped = timed(predict, args.repeats, device, warm_up=False)
            difference = float((batched.maps - looped.maps).abs().max())
            rows.append([label, config.model_name, size, f"{args.batch_size / batched_seconds:.2f}",
                         f"{args.batch_size / loop_seconds:.2f}", f"{loop_seconds / batched_seconds:.1f}x",
                         f"{difference:.1e}"])
        detector.set_references(None)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"batch {args.batch_size}, precision {args.precision}, random weights, median of {args.repeats} batches")
    print(tabulate(rows, headers=["method", "backbone", "px", "images/s", "per-window loop images/s",
                                  "batched / loop", "max |map difference|"], tablefmt="pipe", disable_numparse=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
