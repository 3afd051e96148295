"""torchrun with 2 CPU processes (gloo) against a single process: equal metrics, identical saved
predictions, training equal to float tolerance, resume, and sharding without loss or duplicates."""
from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_clip import cli
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.checkpoint import read_checkpoint
from anomaly_clip.engine.distributed import gather_in_order, get_world_size, shard_items, shard_range
from anomaly_clip.engine.feature_cache import EpochLoader, FeatureCache

from distributed_runs import aaclip_evaluation, aaclip_training, anomalyclip_training, prediction

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["fabric", "washer", "pill"]
LAUNCH_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torchrun(*args: str) -> str:
    """Run ``torchrun --nproc_per_node 2`` in the repository; a hang fails instead of blocking."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {LAUNCH_TIMEOUT_S} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-6000:]
    return output


@contextmanager
def one_thread():
    """A torchrun process computes with one intra-op thread (OMP_NUM_THREADS=1); on the CPU the
    bitwise comparison needs the single process to use the same kernels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """21 images: batches of 4 end with a single image, so one process gets an empty part."""
    root = tmp_path_factory.mktemp("distributed_data")
    return generate_synthetic_dataset(root, classes=CLASSES, n_train=0, n_test_normal=3, n_test_anomalous=4,
                                      image_size=64, seed=5)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    """Single-process reference runs."""
    out = tmp_path_factory.mktemp("single")
    with one_thread():
        cli.train_main(anomalyclip_training(data, out / "anomalyclip", epochs=2, resume=False))
        cli.train_main(anomalyclip_training(data, out / "anomalyclip", epochs=3, resume=True))
        cli.train_main(aaclip_training(data, out / "aaclip"))
        cli.test_main(aaclip_evaluation(data, str(out / "aaclip" / "image_epoch_2.pth"), out / "aaclip_test"))
        cli.predict_main(prediction(data, str(out / "aaclip" / "image_epoch_2.pth"), out / "aaclip_predict"))
        cli.test_main(["--data_path", data, "--checkpoint_path", str(out / "anomalyclip" / "epoch_2.pth"),
                       "--save_path", str(out / "anomalyclip_test"), "--save-predictions",
                       str(out / "anomalyclip_test" / "predictions"), "--batch_size", "8", "--device", "cpu",
                       "--num_workers", "0"])
    return out


@pytest.fixture(scope="module")
def distributed(data, single, tmp_path_factory):
    """The same runs under torchrun: test.py itself, then the driver for training and AA-CLIP."""
    out = tmp_path_factory.mktemp("distributed")
    torchrun("test.py", "--data_path", data, "--checkpoint_path", str(single / "anomalyclip" / "epoch_2.pth"),
             "--save_path", str(out / "anomalyclip_test"), "--save-predictions",
             str(out / "anomalyclip_test" / "predictions"), "--batch_size", "8", "--device", "cpu",
             "--num_workers", "0")
    torchrun(str(REPO / "tests" / "distributed_runs.py"), data, str(out),
             str(single / "aaclip" / "image_epoch_2.pth"))
    return out


def assert_same_predictions(first: Path, second: Path) -> None:
    files = sorted(path.name for path in first.glob("*.npz"))
    assert files == sorted(path.name for path in second.glob("*.npz")) == sorted(f"{c}.npz" for c in CLASSES)
    for name in files:
        a, b = np.load(first / name), np.load(second / name)
        assert sorted(a.files) == sorted(b.files) == ["labels", "maps", "paths", "scores"]
        for key in a.files:
            assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (name, key)


@pytest.mark.parametrize("run", ["anomalyclip_test", "aaclip_test"])
def test_evaluation_equals_single_process(single, distributed, run):
    ours, reference = (json.loads((root / run / "results.json").read_text()) for root in (distributed, single))
    assert ours["classes"] == reference["classes"] and ours["mean"] == reference["mean"]
    assert [row["class"] for row in ours["classes"]] == CLASSES
    assert_same_predictions(distributed / run / "predictions", single / run / "predictions")


def test_every_image_scored_once_in_dataset_order(data, distributed):
    """Shards of 8 and 13 images (batches of 8) and of 9 and 12 (batches of 3) come back whole."""
    expected = sorted(str(path) for path in Path(data).rglob("test/*/*.png"))
    for run in ("anomalyclip_test", "aaclip_test"):
        paths = [p for c in CLASSES for p in np.load(distributed / run / "predictions" / f"{c}.npz")["paths"]]
        assert len(paths) == len(set(paths)) == 21 and sorted(paths) == expected
        content = json.loads((distributed / run / "results.json").read_text())
        assert sum(row["images"] for row in content["classes"]) == 21
    assert (distributed / "anomalyclip_test" / "test_log.txt").is_file()


def test_predict_shards_a_folder_like_one_process(data, single, distributed):
    ours, reference = ((root / "aaclip_predict" / "predictions.csv").read_text().splitlines()
                       for root in (distributed, single))
    images = [path for path in Path(data).rglob("*.png")]
    assert ours[0].startswith("path,score,label") and len(ours) == len(reference) == 1 + len(images)
    assert [row.split(",")[0] for row in ours] == [row.split(",")[0] for row in reference]
    for mine, theirs in zip(ours[1:], reference[1:]):
        assert abs(float(mine.split(",")[1]) - float(theirs.split(",")[1])) < 1e-5 and \
            mine.split(",")[2] == theirs.split(",")[2]
    maps = sorted(p.relative_to(distributed / "aaclip_predict") for p in (distributed / "aaclip_predict").rglob("*.npz"))
    assert len(maps) == len(images)


def test_training_equals_single_process(single, distributed):
    for run, name in [("anomalyclip", "epoch_2.pth"), ("anomalyclip", "epoch_3.pth"), ("aaclip", "text_epoch_1.pth"),
                      ("aaclip", "image_epoch_2.pth")]:
        ours, reference = (read_checkpoint(root / run / name)["state_dict"] for root in (distributed, single))
        assert ours.keys() == reference.keys()
        for key in reference:
            torch.testing.assert_close(ours[key], reference[key], rtol=1e-4, atol=2e-5, msg=f"{run}/{name} {key}")
    stage1_ours = read_checkpoint(distributed / "aaclip" / "text_epoch_1.pth")["state_dict"]
    stage1_reference = read_checkpoint(single / "aaclip" / "text_epoch_1.pth")["state_dict"]
    assert all(torch.equal(stage1_ours[k], stage1_reference[k]) for k in stage1_reference), \
        "the text stage steps on whole gathered batches, so it must equal the single process exactly"


def test_training_logs_resume_and_rank0_files(distributed):
    log = (distributed / "anomalyclip" / "log.txt").read_text()
    assert "Resumed stage 'train'" in log and "train epoch [3/3]" in log
    assert "[rank 1]" not in log
    for name in ("epoch_1.pth", "epoch_2.pth", "epoch_3.pth", "last.pth", "official_epoch_3.pth"):
        assert (distributed / "anomalyclip" / name).is_file()
    assert not list((distributed / "anomalyclip").glob(".*.tmp"))
    assert "every process steps on the whole global batch" in (distributed / "aaclip" / "log.txt").read_text()


def test_sharding_helpers_round_trip_under_torchrun(distributed):
    content = json.loads((distributed / "sharding.json").read_text())
    shards, items = content["shards"], content["items"]
    assert [len(s) for s in shards] == [5, 6] and shards[0] + shards[1] == items
    assert content["gathered"] == [item.upper() for item in items]


def test_shard_range_covers_each_item_once_in_whole_blocks():
    for count, world_size, block in itertools.product([0, 1, 5, 21, 64], [1, 2, 3, 8], [1, 3, 8]):
        shards = [shard_range(count, rank, world_size, block=block) for rank in range(world_size)]
        assert [i for shard in shards for i in shard] == list(range(count))
        assert all(shard.start % block == 0 for shard in shards if len(shard))
        blocks = [-(-len(shard) // block) for shard in shards]
        assert max(blocks) - min(blocks) <= 1, (count, world_size, block)


def test_single_process_helpers_are_identity():
    assert get_world_size() == 1
    items = list("abcdefg")
    assert shard_items(items) == items and gather_in_order(items) == items
    with pytest.raises(ValueError, match="outside a world"):
        shard_range(4, rank=2, world_size=2)


def test_epoch_parts_split_global_batches_and_follow_the_cache():
    dataset = [{"x": torch.tensor([i], dtype=torch.float32), "index": i} for i in range(10)]
    loader = EpochLoader(dataset, batch_size=4, seed=7)
    loader.set_epoch(1)
    batches = list(loader.sampler)
    parts = [loader.parts(rank, 2) for rank in range(2)]
    assert [a + b for a, b in zip(*parts)] == batches
    assert [len(p) for p in parts[1]] == [2, 2, 1]
    cache = FeatureCache(10, "host")
    cache.reserve(torch.tensor([i for part in parts[0] for i in part]))
    cache.put(torch.tensor(parts[0][0]), {"x": torch.tensor(parts[0][0], dtype=torch.float32)[:, None]})
    with pytest.raises(RuntimeError, match="before the first put"):
        cache.reserve(torch.arange(10))
    with pytest.raises(KeyError, match="not held"):
        cache.get(torch.tensor(parts[1][0]))
    owned = [i for part in parts[0] for i in part]
    cache.put(torch.tensor(owned), {"x": torch.tensor(owned, dtype=torch.float32)[:, None]})
    assert cache.complete and torch.equal(cache.get(torch.tensor(owned))["x"][:, 0], torch.tensor(owned).float())
    cached = EpochLoader(dataset, batch_size=4, seed=7, cache=cache)
    cached.set_epoch(2)
    assert [sorted(p) for p in cached.parts()] == [sorted(i for i in b if i in owned) for b in cached.sampler]
