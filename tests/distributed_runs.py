"""Runs launched by ``tests/test_distributed.py`` under ``torchrun --nproc_per_node 2`` (gloo, CPU).

One launch (starting processes is the slow part) trains AnomalyCLIP, resumes it, trains AA-CLIP,
evaluates an AA-CLIP checkpoint, predicts a folder with it and round-trips items through the sharding helpers; the test
compares every output with a single-process run.

Usage: ``torchrun ... tests/distributed_runs.py DATA_ROOT OUTPUT_DIR AACLIP_CHECKPOINT``
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from anomaly_clip import cli
from anomaly_clip.engine.distributed import (gather_in_order, gather_objects, get_rank, init_distributed,
                                             is_main_process, shard_items)

TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu",
        "--num_workers", "0"]


def anomalyclip_training(data: str, output: Path, epochs: int, resume: bool) -> list:
    return ["--train_data_path", data, "--save_path", str(output), "--epoch", str(epochs), "--batch_size", "4",
            "--features_list", "12", "24", *(["--resume"] if resume else []), *TINY]


def aaclip_training(data: str, output: Path) -> list:
    return ["--method", "aaclip", "--dataset", "synthetic", "--train_data_path", data, "--save_path", str(output),
            "--text_epoch", "1", "--image_epoch", "2", "--text_batch_size", "4", "--image_batch_size", "4",
            "--seed", "3", "--seeded_augmentation", *TINY]


def aaclip_evaluation(data: str, checkpoint: str, output: Path) -> list:
    return ["--data_path", data, "--dataset", "synthetic", "--checkpoint_path", checkpoint, "--save_path",
            str(output), "--save-predictions", str(output / "predictions"), "--batch_size", "3", "--device", "cpu",
            "--num_workers", "0"]


def prediction(data: str, checkpoint: str, output: Path) -> list:
    return ["--checkpoint_path", checkpoint, "--input", data, "--save_path", str(output), "--image_threshold", "0.5",
            "--save-maps", "npz", "--batch_size", "4", "--device", "cpu", "--num_workers", "0"]


def main(data: str, output: str, aaclip_checkpoint: str) -> None:
    output = Path(output)
    init_distributed("cpu")
    cli.train_main(anomalyclip_training(data, output / "anomalyclip", epochs=2, resume=False))
    cli.train_main(anomalyclip_training(data, output / "anomalyclip", epochs=3, resume=True))
    cli.train_main(aaclip_training(data, output / "aaclip"))
    cli.test_main(aaclip_evaluation(data, aaclip_checkpoint, output / "aaclip_test"))
    cli.predict_main(prediction(data, aaclip_checkpoint, output / "aaclip_predict"))
    items = [f"image_{i:02d}.png" for i in range(11)]
    local = shard_items(items)
    shards = gather_objects(local)
    gathered = gather_in_order([name.upper() for name in local])
    if is_main_process():
        (output / "sharding.json").write_text(json.dumps({"items": items, "shards": shards, "gathered": gathered}))
    print(f"rank {get_rank()} done")


if __name__ == "__main__":
    main(*sys.argv[1:])
