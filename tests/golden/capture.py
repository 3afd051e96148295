"""Capture the outputs of the stable command-line entry points for the golden comparison.

Runs, on a tiny random backbone and a tiny synthetic dataset, for AnomalyCLIP and AA-CLIP:
``python train.py``, ``python test.py --save-predictions``, ``python -m anomaly_clip calibrate``
and ``python -m anomaly_clip predict --save-maps npz``, and writes what they produced, reduced to
exact values, into one folder:

* ``<method>.npz``: test scores, labels and maps per class, predict scores and original-size maps,
  the calibration thresholds;
* ``<method>.json``: the metrics of ``results.json``, ``predictions.csv`` (paths relative to the
  data root), the calibration values, and a SHA-256 per tensor of the trained weights (the
  weights themselves are too large to commit; equal hashes mean bit-identical tensors).

Only flag spellings that every version of the command line accepts are used, so the script
captures an older checkout as well as the current one::

    python tests/golden/capture.py                    # this checkout -> tests/golden/data
    python tests/golden/capture.py --checkout OTHER --output /tmp/golden

``tests/test_golden.py`` reruns it and requires bit-identical outputs.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CHECKOUT = HERE.parents[1]
DEFAULT_OUTPUT = HERE / "data"
METHODS = ("anomalyclip", "aaclip")
TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu",
        "--num_workers", "0"]
TRAIN = {
    "anomalyclip": ["--epoch", "2", "--batch_size", "4", "--features_list", "12", "24"],
    "aaclip": ["--text_epoch", "1", "--image_epoch", "2", "--text_batch_size", "4", "--image_batch_size", "2",
               "--dataset", "mvtec"],
}
FINAL = {"anomalyclip": "epoch_2.pth", "aaclip": "image_epoch_2.pth"}
DATA = dict(classes=["fabric", "washer"], n_train=2, n_test_normal=3, n_test_anomalous=3, image_size=64, seed=4)


def run(checkout: Path, arguments: Sequence[str], cwd: Path) -> None:
    """Run one command of ``checkout`` with its own package first on the path; fail loudly."""
    environment = dict(os.environ, PYTHONPATH=str(checkout), CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    completed = subprocess.run([sys.executable, *arguments], cwd=cwd, env=environment, capture_output=True,
                               text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(arguments)} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")


def tensor_hashes(path: Path) -> Dict[str, str]:
    """SHA-256 of every learnt tensor of a checkpoint (name -> hex digest of dtype, shape, bytes)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    hashes = {}
    for name in sorted(state):
        tensor = state[name].contiguous()
        digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        hashes[name] = digest.hexdigest()
    return hashes


def capture_method(checkout: Path, method: str, data: Path, work: Path) -> tuple:
    """Run the four commands of ``method`` and return (arrays, values) to store."""
    checkpoints, results, predictions = work / f"{method}_ckpt", work / f"{method}_results", work / f"{method}_pred"
    run(checkout, [str(checkout / "train.py"), "--method", method, "--train_data_path", str(data), "--save_path",
                   str(checkpoints), *TRAIN[method], *TINY], work)
    final = checkpoints / FINAL[method]
    saved = results / "predictions"
    run(checkout, [str(checkout / "test.py"), "--data_path", str(data), "--checkpoint_path", str(final),
                   "--save_path", str(results), "--save-predictions", str(saved), "--batch_size", "4", *TINY], work)
    calibration = work / f"{method}.calibration.json"
    run(checkout, ["-m", "anomaly_clip", "calibrate", "--checkpoint_path", str(final), "--data_path", str(data),
                   "--output", str(calibration), "--batch_size", "4", *TINY], work)
    inputs = [str(data / name / "test") for name in DATA["classes"][:1]]
    run(checkout, ["-m", "anomaly_clip", "predict", "--checkpoint_path", str(final), "--input", *inputs,
                   "--save_path", str(predictions), "--calibration", str(calibration), "--save-maps", "npz",
                   "--batch_size", "4", "--class_name", DATA["classes"][0], *TINY], work)

    arrays: Dict[str, np.ndarray] = {}
    for name in DATA["classes"]:
        with np.load(saved / f"{name}.npz") as stored:
            for key in ("labels", "scores", "maps"):
                arrays[f"test/{name}/{key}"] = stored[key]
    rows: List[dict] = []
    with (predictions / "predictions.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            relative = Path(row["path"]).resolve().relative_to(data.resolve()).as_posix()
            row.pop("warning", None)  # the random-weights mark of newer versions: the same on every row, not a value
            rows.append({**row, "path": relative})
            below_input = Path(row["path"]).resolve().relative_to(Path(inputs[0]).resolve()).as_posix()
            with np.load(predictions / "maps" / (below_input + ".npz")) as stored:
                arrays[f"predict/{relative}/map"] = stored["map"]
                arrays[f"predict/{relative}/score"] = stored["score"]
    metrics = json.loads((results / "results.json").read_text())
    metrics.pop("settings", None)
    calibrated = json.loads(calibration.read_text())
    values = {
        "results": metrics,
        "predictions_csv": rows,
        "calibration": {key: calibrated.get(key) for key in ("image_threshold", "pixel_threshold",
                                                               "score_statistics", "map_range", "rule")},
        "weights_sha256": tensor_hashes(final),
    }
    return arrays, values


def capture(checkout: Path = DEFAULT_CHECKOUT, output: Path = DEFAULT_OUTPUT,
            methods: Sequence[str] = METHODS, work: Optional[Path] = None) -> Path:
    """Capture every method of ``methods`` with ``checkout``'s code into ``output``."""
    checkout, output = Path(checkout).resolve(), Path(output)
    keep = work is not None
    work = Path(work) if keep else Path(tempfile.mkdtemp(prefix="golden_"))
    try:
        data = work / "data"
        code = ("import sys; from anomaly_clip.data.synthetic import generate_synthetic_dataset as g; "
                f"g(sys.argv[1], **{DATA!r})")
        run(checkout, ["-c", code, str(data)], work)
        output.mkdir(parents=True, exist_ok=True)
        for method in methods:
            arrays, values = capture_method(checkout, method, data, work)
            np.savez_compressed(output / f"{method}.npz", **arrays)
            (output / f"{method}.json").write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return output


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, default=DEFAULT_CHECKOUT, help="repository whose code runs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder for the golden files")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    print(capture(args.checkout, args.output, args.methods))


if __name__ == "__main__":
    main()
