"""Inference throughput of a detector in PyTorch and of its ONNX export on ONNX Runtime, in one run.

Both score the same preprocessed batches with the same weights: ``detector(images)`` (PyTorch,
float32 on the CPU; on a GPU also with ``--precision`` autocast) against the exported graph
(``load_onnx(path)(images)``: ONNX Runtime's CPU provider, and its CUDA provider when
onnxruntime-gpu and a GPU are present; ``--half`` adds the float16 export). The runtimes take
turns over ``--rounds`` rounds, so a load change on a shared machine hits all of them; reported
are the median images/s, the ratio to PyTorch float32 on the same device, and the largest score
and map differences from PyTorch float32 on the CPU.

Tiny backbone by default; ``--model ViT-L-14-336 --image-size 518`` gives the real shapes. The
backbone has random weights (they do not change the speed) unless ``--pretrained`` asks for the
method's CLIP weights from the open_clip cache. Both runtimes get ``--threads`` CPU threads.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tabulate import tabulate

import anomaly_clip
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.engine.detector import Prediction
from anomaly_clip.engine.export import export_onnx, exportable_methods, load_onnx
from anomaly_clip.engine.precision import autocast
from anomaly_clip.engine.registry import find_method

Runner = Tuple[str, str, Callable[[torch.Tensor], Prediction], Sequence[torch.Tensor]]
"""(device, runtime, images -> prediction, batches on that runtime's input device)."""


def timed(predict: Callable[[torch.Tensor], Prediction], batches: Sequence[torch.Tensor]) -> Tuple[float, Prediction]:
    """(images/s, last prediction) over ``batches``, GPU work finished before the clock stops."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for batch in batches:
        prediction = predict(batch)
    if cuda:
        torch.cuda.synchronize()
    return sum(len(b) for b in batches) / (time.perf_counter() - start), prediction


def difference(prediction: Prediction, reference: Prediction) -> str:
    scores = (prediction.scores.float().cpu() - reference.scores.cpu()).abs().max().item()
    maps = (prediction.maps.float().cpu() - reference.maps.cpu()).abs().max().item()
    return f"{scores:.1e} / {maps:.1e}"


def measure(runners: Sequence[Runner], rounds: int) -> Dict[str, Tuple[float, Prediction]]:
    """Median images/s of each runner over ``rounds`` turns (one warm-up batch each first)."""
    speeds: Dict[str, List[float]] = {}
    last: Dict[str, Prediction] = {}
    for _, name, predict, batches in runners:
        predict(batches[0])
    for _ in range(rounds):
        for device, name, predict, batches in runners:
            speed, last[f"{device} {name}"] = timed(predict, batches)
            speeds.setdefault(f"{device} {name}", []).append(speed)
    return {key: (statistics.median(values), last[key]) for key, values in speeds.items()}


def time_runtimes(detector, graphs: Dict[str, Path], batches: Sequence[torch.Tensor], threads: int, rounds: int,
                  precision: str) -> Dict[str, Tuple[float, Prediction]]:
    """Images/s and last prediction of PyTorch and of each exported graph, on the CPU and the GPU."""
    with torch.inference_mode():
        runners: List[Runner] = [("cpu", "PyTorch fp32", detector, batches)]
        runners += [("cpu", f"ONNX Runtime {name}", load_onnx(path, device="cpu", threads=threads), batches)
                    for name, path in graphs.items()]
        results = measure(runners, rounds)
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gpu_detector = detector.to(gpu)
            gpu_batches = [b.to(gpu) for b in batches]

            def mixed(images: torch.Tensor) -> Prediction:
                with autocast(gpu, precision):
                    return gpu_detector(images)

            gpu_runners: List[Runner] = [("cuda", "PyTorch fp32", gpu_detector, gpu_batches),
                                         ("cuda", f"PyTorch autocast {precision}", mixed, gpu_batches)]
            for name, path in graphs.items():
                try:  # host in, host out: what a deployment feeds it
                    gpu_runners.append(("cuda", f"ONNX Runtime {name}", load_onnx(path, device="cuda"), batches))
                except ValueError as error:
                    print(f"ONNX Runtime on CUDA skipped: {error}")
            results.update(measure(gpu_runners, rounds))
    return results


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="anomalyclip", choices=exportable_methods())
    parser.add_argument("--model", default="anomaly-clip-tiny", help="open_clip model name")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--pretrained", action="store_true",
                        help="the method's pretrained CLIP weights from the open_clip cache (default: random "
                             "weights, the same speed; the tiny model has none)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per runtime and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns of all runtimes (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads of both runtimes")
    parser.add_argument("--half", action="store_true", help="also export and time the float16 graph")
    parser.add_argument("--precision", default="auto", help="PyTorch autocast on the GPU (auto: bf16/fp16)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = find_method(args.method).detector_class.default_backbone_config()
    config = replace(config, model_name=args.model, image_size=args.image_size, random_init=not args.pretrained,
                     pretrained=config.pretrained if args.pretrained else None)
    detector = anomaly_clip.create_detector(args.method, backbone=load_backbone(config, device="cpu")).eval()
    class_name = "object" if detector.class_text("object") is not None else None
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
               for _ in range(args.batches)]
    with torch.inference_mode():
        reference = detector(batches[-1])
    with tempfile.TemporaryDirectory() as folder:
        graphs = {"fp32": Path(folder) / "model.onnx"}
        if args.half:
            graphs["fp16"] = Path(folder) / "model_fp16.onnx"
        exports = []
        for name, path in graphs.items():
            start = time.perf_counter()
            export_onnx(detector, path, class_name=class_name, half=name == "fp16")
            exports.append(f"{name} {time.perf_counter() - start:.0f} s, {path.stat().st_size / 1e6:.1f} MB")
        results = time_runtimes(detector, graphs, batches, args.threads, args.rounds, args.precision)
    rows = []
    for device in ("cpu", "cuda"):
        for key, (speed, prediction) in results.items():
            if key.startswith(f"{device} "):
                base = results[f"{device} PyTorch fp32"][0]
                rows.append([device, key[len(device) + 1:], f"{speed:.3g}", f"{speed / base:.2f}x",
                             difference(prediction, reference)])
    print(f"{args.method} on {args.model} at {args.image_size}px ({'pretrained' if args.pretrained else 'random'} "
          f"weights), batches of {args.batch_size}, {args.threads} CPU threads, median of {args.rounds} rounds of "
          f"{args.batches} batches; export: {'; '.join(exports)}")
    print(tabulate(rows, headers=["device", "runtime", "images/s", "vs PyTorch fp32", "max |d score| / |d map|"],
                   tablefmt="github"))


if __name__ == "__main__":
    main()
