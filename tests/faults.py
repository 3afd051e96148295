"""Helpers of the fault tests: tiny command-line flags, a planted pickle, and the one-line check."""
from __future__ import annotations

import builtins
import pickle
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

from anomaly_clip.cli.main import run
from anomaly_clip.data.synthetic import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
SIZE = 56
TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", str(SIZE), "--device", "cpu",
        "--num_workers", "0"]
ANOMALYCLIP_TRAIN = ["--batch_size", "4", "--features_list", "12", "24", *TINY]
AACLIP_TRAIN = ["--method", "aaclip", "--text_batch_size", "4", "--image_batch_size", "2", *TINY]


def small_dataset(factory, seed: int, classes: Sequence[str] = ("fabric",), anomalous: int = 2) -> Path:
    """A synthetic dataset of 64 px images: per class 2 training, 2 normal and ``anomalous`` test images."""
    return Path(generate_synthetic_dataset(factory.mktemp("data"), classes=list(classes), n_train=2, n_test_normal=2,
                                           n_test_anomalous=anomalous, image_size=64, seed=seed))


class Payload:
    """Unpickling this calls ``open(marker, "w")``: the marker file appears only if the payload ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path: Path, marker: Path, kind: str = "torch", contents: Any = None) -> Path:
    """Write a malicious file at ``path``: a torch zip (``torch.save``) or a plain pickle whose
    dictionary holds :class:`Payload` beside ``contents`` (e.g. the keys a real file has)."""
    payload = dict(contents or {}, payload=Payload(marker))
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
    return path


def one_line(stderr: str) -> str:
    """The single message of a failed command: no traceback, one ``error:`` line, and that line
    last (progress bars, redrawn with carriage returns, stripped)."""
    assert "Traceback" not in stderr and stderr.count("error:") <= 1, stderr
    return stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]


def fails(capsys, command: str, argv: Sequence[str], code: int = 2) -> str:
    """Run ``anomaly-clip <command> argv`` in process; it must exit with ``code`` and one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as caught:
        run(command, [str(arg) for arg in argv])
    assert caught.value.code == code
    message = one_line(capsys.readouterr().err)
    assert message.startswith("error: ") or code == 130, message
    return message
