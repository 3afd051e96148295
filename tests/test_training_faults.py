"""Training, resume and output files under faults (issue 18, items 4 and 7): finished or
over-long resumes, impossible epoch and batch settings, kills between the files of an epoch,
broken or foreign resume files, two runs in one folder, a real full disk, interrupted result
groups, and a stopped torchrun process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_clip import files
from anomaly_clip.cli.main import run
from anomaly_clip.engine.checkpoint import read_checkpoint
from anomaly_clip.files import LOCK_NAME
from anomaly_clip.metrics import AnomalyEvaluator

from faults import AACLIP_TRAIN, ANOMALYCLIP_TRAIN, REPO, TINY, fails, one_line, small_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory, seed=6, anomalous=3)


def train(data, save, *flags):
    return run("train", [str(a) for a in ["--train_data_path", data, "--save_path", save, *flags]])


def environment():
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                OMP_NUM_THREADS="1")


def tensors_equal(first: Path, second: Path) -> bool:
    """The learnt tensors of two torch files are equal (run settings, which name the folder, aside)."""

    def tensors(value, prefix=""):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in tensors(item, f"{prefix}{key}.").items()}
        return {prefix: value} if torch.is_tensor(value) else {}

    a, b = (tensors(torch.load(path, weights_only=True)) for path in (first, second))
    return a.keys() == b.keys() and len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)


# ---- resume ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["anomalyclip", "aaclip"])
def test_resume_of_a_finished_run_returns_its_final_checkpoint(data, tmp_path, method):
    flags = ANOMALYCLIP_TRAIN + ["--epoch", "1"] if method == "anomalyclip" else \
        AACLIP_TRAIN + ["--text_epoch", "1", "--image_epoch", "1"]
    final = train(data, tmp_path, *flags)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.pth")}
    assert train(data, tmp_path, "--resume", *flags) == final and final.is_file()
    assert "had already finished its 1 epochs: nothing left to train" in (tmp_path / "log.txt").read_text()
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pth")}.keys() == before.keys()


def test_resume_past_the_requested_epochs_is_one_line(data, tmp_path, capsys):
    train(data, tmp_path, "--epoch", "2", *ANOMALYCLIP_TRAIN)
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path, "--resume", "--epoch", "1",
                                      *ANOMALYCLIP_TRAIN])
    assert f"cannot resume from {tmp_path / 'last.pth'}: it is at epoch 2, past the 1 epochs" in message


@pytest.mark.parametrize("flags, problem", [
    (["--epoch", "0"], "need epoch >= 1"), (["--epoch", "-2"], "need epoch >= 1"),
    (["--batch_size", "0"], "batch_size >= 1"),
    (["--method", "aaclip", "--image_epoch", "0"], "need image_epoch >= 1"),
    (["--method", "aaclip", "--text_epoch", "-1"], "need text_epoch >= 0"),
    (["--method", "aaclip", "--text_batch_size", "0"], "need text_batch_size >= 1"),
    (["--method", "aaclip", "--image_batch_size", "0"], "need image_batch_size >= 1"),
    (["--method", "anomalyclip_adapters", "--prompt_epoch", "0"], "need prompt_epoch >= 1"),
    (["--save_freq", "0"], "save_freq must be >= 1"),
])
def test_impossible_epochs_and_batch_sizes_are_one_line_before_anything_is_written(data, tmp_path, capsys, flags,
                                                                                   problem):
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "run", *flags, *TINY])
    assert problem in message
    assert not (tmp_path / "run").exists()


KILL_WHILE_WRITING = textwrap.dedent("""
    import os, signal, sys
    from anomaly_clip.engine import training
    from anomaly_clip.cli.main import run

    victim = sys.argv.pop(1)
    write = training.atomic_save

    def write_or_die(payload, path):
        if os.path.basename(str(path)) == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(payload, path)

    training.atomic_save = write_or_die
    run("train", sys.argv[1:])
""")


@pytest.mark.parametrize("method, victim, group", [
    ("anomalyclip", "official_epoch_2.pth", ["epoch_2.pth", "official_epoch_2.pth", "last.pth"]),
    ("aaclip", "image_adapter.pth", ["image_epoch_1.pth", "image_adapter_1.pth", "image_adapter.pth",
                                     "image_last.pth"]),
])
def test_a_kill_between_the_files_of_an_epoch_loses_none_of_them(data, tmp_path, method, victim, group):
    flags = ["--train_data_path", str(data)] + (  # no feature cache: replayed features round differently
        ANOMALYCLIP_TRAIN + ["--epoch", "2", "--feature_cache", "off"] if method == "anomalyclip" else
        AACLIP_TRAIN + ["--text_epoch", "1", "--image_epoch", "1"])
    killed = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, victim, "--save_path", str(tmp_path / "run"),
                             *flags], cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "run" / group[-1]
    assert not (tmp_path / "run" / victim).exists() and (tmp_path / "run" / group[0]).exists()
    assert not last.exists() or torch.load(last, weights_only=True)["epoch"] < int(group[0].split("_")[-1][:-4])
    run("train", flags + ["--save_path", str(tmp_path / "run"), "--resume"])
    run("train", flags + ["--save_path", str(tmp_path / "straight")])
    for name in group:
        assert tensors_equal(tmp_path / "run" / name, tmp_path / "straight" / name), name


def test_files_of_the_resumed_epoch_missing_after_a_kill_are_written_again(data, tmp_path):
    """Earlier versions wrote the resume file before the official files: a kill in between left
    an epoch without them. A resume writes the resumed epoch's files again."""
    train(data, tmp_path, "--epoch", "2", *ANOMALYCLIP_TRAIN)
    kept = {name: torch.load(tmp_path / name, weights_only=True) for name in ("epoch_2.pth", "official_epoch_2.pth")}
    for name in kept:
        (tmp_path / name).unlink()
    train(data, tmp_path, "--epoch", "2", "--resume", *ANOMALYCLIP_TRAIN)
    for name, contents in kept.items():
        again = torch.load(tmp_path / name, weights_only=True)
        state = again["state_dict"] if "state_dict" in again else again["prompt_learner"]
        expected = contents["state_dict"] if "state_dict" in contents else contents["prompt_learner"]
        assert all(torch.equal(state[k], expected[k]) for k in expected), name


def test_a_truncated_resume_file_is_one_line_naming_it(data, tmp_path, capsys):
    train(data, tmp_path, "--epoch", "1", *ANOMALYCLIP_TRAIN)
    last = tmp_path / "last.pth"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path, "--resume", "--epoch", "2",
                                      *ANOMALYCLIP_TRAIN])
    assert f"resume file {last}" in message and "maybe truncated" in message


@pytest.mark.parametrize("change, difference", [
    (["--features_list", "6", "24"], "features_list=(12, 24) (this run: (6, 24))"),
    (["--n_ctx", "4"], "n_ctx=12 (this run: 4)"),
    (["--image_size", "112"], "image_size=56 (this run: 112)"),
])
def test_resuming_with_another_architecture_is_one_line_naming_the_difference(data, tmp_path, capsys, change,
                                                                              difference):
    train(data, tmp_path, "--epoch", "1", *ANOMALYCLIP_TRAIN)
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path, "--resume", "--epoch", "2",
                                      *ANOMALYCLIP_TRAIN, *change])
    assert message.startswith(f"error: cannot resume from {tmp_path / 'last.pth'}: it was trained with")
    assert difference in message


def test_init_checkpoint_with_another_architecture_is_one_line_naming_the_difference(data, tmp_path, capsys):
    """``--init_checkpoint`` with ``--n_ctx 4`` on a checkpoint trained with 12 was a
    ``load_state_dict`` size-mismatch traceback."""
    checkpoint = train(data, tmp_path / "first", "--epoch", "1", *ANOMALYCLIP_TRAIN)
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "second", "--epoch", "1",
                                      "--init_checkpoint", checkpoint, *ANOMALYCLIP_TRAIN, "--n_ctx", "4"])
    assert message.startswith(f"error: --init_checkpoint {checkpoint} does not fit this run: it was trained with ")
    assert "n_ctx=12 (this run: 4)" in message and "without --init_checkpoint" in message
    assert train(data, tmp_path / "third", "--epoch", "1", "--init_checkpoint", checkpoint, *ANOMALYCLIP_TRAIN).is_file()


# ---- one run per folder -----------------------------------------------------------------------------

HOLD_THE_LOCK = textwrap.dedent("""
    import sys, time
    from anomaly_clip.files import folder_lock
    with folder_lock(sys.argv[1], "a test"):
        print("holding", flush=True)
        time.sleep(120)
""")


def test_a_folder_in_use_by_a_live_run_is_refused_and_a_dead_runs_lock_taken_over(data, tmp_path, capsys):
    save = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(save)], env=environment(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        message = fails(capsys, "train", ["--train_data_path", data, "--save_path", save, "--epoch", "1",
                                          *ANOMALYCLIP_TRAIN])
        assert f"is in use by process {holder.pid}" in message and str(save / LOCK_NAME) in message
        assert sorted(p.name for p in save.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    assert (save / LOCK_NAME).exists()  # a killed run leaves its lock behind
    final = train(data, save, "--epoch", "1", *ANOMALYCLIP_TRAIN)
    assert final.is_file() and not (save / LOCK_NAME).exists()
    assert f"left by process {holder.pid} (no longer running)" in capsys.readouterr().out


def test_two_runs_into_one_folder_at_once_one_trains_the_other_stops(data, tmp_path, capsys):
    save = tmp_path / "shared"
    first = subprocess.Popen([sys.executable, "-m", "anomaly_clip", "train", "--train_data_path", str(data),
                              "--save_path", str(save), "--epoch", "3", "--seed", "1", *ANOMALYCLIP_TRAIN],
                             env=environment(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (save / LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", save, "--epoch", "3", "--seed", "2",
                                      *ANOMALYCLIP_TRAIN])
    assert "is in use by process" in message
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    seeds = {read_checkpoint(path)["run_settings"]["seed"] for path in save.glob("epoch_*.pth")}
    assert seeds == {1}


# ---- a real full disk ----------------------------------------------------------------------------------

@contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (needs the right to mount: root), else skip."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_training_on_a_really_full_disk_is_one_line_and_keeps_complete_files(data, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "1500k") as disk:
        message = fails(capsys, "train", ["--train_data_path", data, "--save_path", disk / "run", "--epoch", "2",
                                          "--no-export-official", *ANOMALYCLIP_TRAIN])
        assert message.startswith(f"error: cannot write {disk / 'run' / 'last.pth'} (")
        assert "free there: is the disk full?" in message
        leftovers = [p.name for p in (disk / "run").iterdir() if p.name.startswith(".") and p.name != LOCK_NAME]
        assert leftovers == [] and not (disk / "run" / LOCK_NAME).exists()
        assert read_checkpoint(disk / "run" / "epoch_1.pth")["epoch"] == 1


def test_predict_on_a_really_full_disk_never_leaves_a_truncated_map(tmp_path, capsys, tiny_backbone):
    from anomaly_clip.engine.checkpoint import create_detector, save_checkpoint

    model = save_checkpoint(tmp_path / "model.pth", create_detector("anomalyclip", backbone=tiny_backbone,
                                                                    config={"features_list": (12, 24)}))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        Image.fromarray(rng.integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(images / f"{index}.png")
    with small_disk(tmp_path / "disk", "400k") as disk:
        message = fails(capsys, "predict", ["--checkpoint_path", model, "--input", images, "--save_path", disk / "out",
                                            "--save_maps", "npz", "--batch_size", "1", *TINY])
        assert message.startswith("error: ") and "could not be written" in message and "is the disk full?" in message
        written = list((disk / "out" / "maps").glob("*.npz"))
        for path in written:
            with np.load(path) as stored:
                assert stored["map"].shape == (300, 300)
        assert not [p for p in (disk / "out").rglob(".*") if p.is_file()]
        assert len(written) < 6


# ---- result files ----------------------------------------------------------------------------------

def test_an_interrupted_result_group_keeps_the_previous_complete_results_json(tmp_path, monkeypatch):
    """docs/reliability.md: the three result files are renamed one after another, results.json
    last, so a kill between two renames leaves the previous results.json whole."""
    labels = torch.tensor([0, 1, 0, 1])
    evaluator = AnomalyEvaluator()
    evaluator.update(["part"] * 4, labels, torch.tensor([0.1, 0.9, 0.2, 0.8]), torch.zeros(4, 8, 8),
                     torch.zeros(4, 8, 8))
    evaluator.compute().save(tmp_path)
    before = (tmp_path / "results.json").read_bytes()
    renames = []
    real_replace = os.replace

    def replace_then_die(source, target):
        if renames:
            raise KeyboardInterrupt
        renames.append(Path(target).name)
        return real_replace(source, target)

    evaluator = AnomalyEvaluator()
    evaluator.update(["part"] * 4, labels, torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.zeros(4, 8, 8),
                     torch.zeros(4, 8, 8))
    monkeypatch.setattr(files.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        evaluator.compute().save(tmp_path)
    assert renames == ["results.csv"] and (tmp_path / "results.json").read_bytes() == before
    assert json.loads(before) and not list(tmp_path.glob(".*tmp*"))


# ---- torchrun --------------------------------------------------------------------------------------

STOP_RANK_1 = textwrap.dedent("""
    import os, signal, sys
    from anomaly_clip.engine import distributed
    from anomaly_clip.cli.main import run

    join = distributed.init_distributed

    def join_then_stop(*args, **kwargs):
        device = join(*args, **kwargs)
        if distributed.get_rank() == 1:
            os.kill(os.getpid(), signal.SIGSTOP)
        return device

    distributed.init_distributed = join_then_stop
    run("test", sys.argv[1:])
""")


def test_a_stopped_torchrun_process_ends_the_run_after_dist_timeout(data, tmp_path, tiny_backbone):
    """Without a bound the other processes wait 30 minutes (PyTorch's default) in the first
    collective; ``--dist_timeout 5`` ends rank 0 after about 5 s with one line."""
    from anomaly_clip.engine.checkpoint import create_detector, save_checkpoint

    model = save_checkpoint(tmp_path / "model.pth", create_detector("anomalyclip", backbone=tiny_backbone,
                                                                    config={"features_list": (12, 24)}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["--data_path", str(data), "--checkpoint_path", str(model), "--save_path", str(tmp_path / "out"),
            "--dist_timeout", "5", "--metrics", "image-level", *TINY]
    processes = []
    for rank in (0, 1):
        env = dict(environment(), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        processes.append(subprocess.Popen([sys.executable, "-c", STOP_RANK_1, *argv], env=env, cwd=REPO,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    started = time.time()
    try:
        _, stderr = processes[0].communicate(timeout=200)
        elapsed = time.time() - started
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert processes[0].returncode == 2, stderr[-3000:]
    message = one_line(stderr)
    assert message.startswith("error: rank 0: another torchrun process did not reach a synchronisation point")
    assert "--dist_timeout SECONDS" in message and elapsed < 120
