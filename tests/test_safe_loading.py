"""No file the library reads can run code: a planted pickle under every load path executes
nothing and ends in one error line (issue 18, item 1).

Each test plants a file whose unpickling would call ``open(marker, "w")``; the marker must not
exist afterwards. ``test_the_planted_payload_is_live`` proves the payload does run under an
unsafe load, so the other tests can fail.
"""
from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_clip.engine.checkpoint import read_checkpoint, save_checkpoint
from anomaly_clip.engine.training import read_resume_state
from anomaly_clip.files import read_torch_file
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig

from faults import AACLIP_TRAIN, ANOMALYCLIP_TRAIN, REPO, TINY, fails, plant, small_dataset

PACKAGE = REPO / "anomaly_clip"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tiny_backbone, tmp_path_factory):
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(features_list=(12, 24)))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "model.pth", detector)


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "payload_ran"
    yield path
    assert not path.exists(), "the planted pickle ran its payload"


def test_the_planted_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    for kind in ("torch", "pickle"):
        path = plant(tmp_path / f"evil.{kind}", marker, kind)
        if kind == "torch":
            torch.load(path, weights_only=False)
        else:
            with open(path, "rb") as handle:
                pickle.load(handle)
        assert marker.exists()
        marker.unlink()
        with pytest.raises(ValueError, match=r"refusing|refused"):
            read_torch_file(path)
        assert not marker.exists()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
@pytest.mark.parametrize("method, resume_file", [("anomalyclip", "last.pth"), ("aaclip", "text_last.pth")])
def test_resume_does_not_run_a_planted_last_pth(data, tmp_path, capsys, marker, kind, method, resume_file):
    save = tmp_path / "run"
    plant(save / resume_file, marker, kind, {"state_dict": {}, "epoch": 1})
    flags = ANOMALYCLIP_TRAIN + ["--epoch", "1"] if method == "anomalyclip" else \
        AACLIP_TRAIN + ["--text_epoch", "1", "--image_epoch", "1"]
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", save, "--resume", *flags])
    assert str(save / resume_file) in message and "refused" in message


@pytest.mark.parametrize("command", ["test", "predict", "calibrate"])
def test_checkpoint_path_does_not_run_a_planted_checkpoint(data, tmp_path, capsys, marker, command):
    evil = plant(tmp_path / "epoch_15.pth", marker, "torch", {"prompt_learner": {}})
    argv = ["--checkpoint_path", evil, *TINY]
    argv += {"test": ["--data_path", data, "--save_path", tmp_path / "out"],
             "predict": ["--input", data, "--save_path", tmp_path / "out"],
             "calibrate": ["--data_path", data]}[command]
    message = fails(capsys, command, argv)
    assert str(evil) in message and "would import" in message


def test_init_checkpoint_does_not_run_a_planted_checkpoint(data, tmp_path, capsys, marker):
    evil = plant(tmp_path / "released.pth", marker, "pickle")
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "run", "--epoch", "1",
                                      "--init_checkpoint", evil, *ANOMALYCLIP_TRAIN])
    assert str(evil) in message and "refused" in message


@pytest.mark.parametrize("planted", ["image_adapter.pth", "text_adapter.pth"])
def test_official_aaclip_folder_does_not_run_a_planted_adapter(data, tmp_path, capsys, marker, planted):
    folder = tmp_path / "official"
    folder.mkdir()
    torch.save({"epoch": 1, "image_adapter": {}}, folder / "image_adapter.pth")
    torch.save({"epoch": 1, "text_adapter": {}}, folder / "text_adapter.pth")
    plant(folder / planted, marker, "torch")
    message = fails(capsys, "test", ["--checkpoint_path", folder, "--data_path", data, "--save_path",
                                     tmp_path / "out", *TINY])
    assert str(folder / planted) in message and "refused" in message


def test_reference_bank_does_not_run_a_planted_file(data, checkpoint, tmp_path, capsys, marker):
    evil = plant(tmp_path / "bank.pth", marker, "torch", {"format": "anomaly_clip.memory_bank"})
    message = fails(capsys, "predict", ["--checkpoint_path", checkpoint, "--input", data, "--save_path",
                                        tmp_path / "out", "--reference_images", evil, *TINY])
    assert str(evil) in message and "memory bank" in message


def _torchscript_archive(path: Path, marker: Path) -> Path:
    """A TorchScript archive (the format of OpenAI's .pt files) whose pickles carry the payload."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.weight

    clean = path.with_suffix(".clean.pt")
    torch.jit.save(torch.jit.script(Tiny()), clean)
    evil = plant(path.with_suffix(".pkl"), marker, "pickle").read_bytes()
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            target.writestr(name, evil if name.endswith(("data.pkl", "constants.pkl")) else source.read(name))
    return path


@pytest.mark.parametrize("kind", ["torch", "pickle", "torchscript"])
def test_clip_weights_file_does_not_run_a_planted_pickle(data, checkpoint, tmp_path, capsys, marker, kind):
    if kind == "torchscript":
        evil = _torchscript_archive(tmp_path / "ViT-L-14-336px.pt", marker)
    else:
        evil = plant(tmp_path / "weights.pt", marker, kind, {"state_dict": {}})
    message = fails(capsys, "predict", ["--checkpoint_path", checkpoint, "--input", data, "--save_path",
                                        tmp_path / "out", "--weights_path", evil, "--model", "anomaly-clip-tiny",
                                        "--image_size", "56", "--device", "cpu", "--num_workers", "0"])
    assert str(evil) in message


def test_calibration_and_config_files_are_plain_text(data, checkpoint, tmp_path, capsys, marker):
    calibration = plant(tmp_path / "evil.calibration.json", marker, "pickle")
    message = fails(capsys, "predict", ["--checkpoint_path", checkpoint, "--input", data, "--save_path",
                                        tmp_path / "out", "--calibration", calibration, *TINY])
    assert f"cannot read calibration {calibration}" in message
    config = tmp_path / "evil.yaml"
    config.write_text(f"train:\n  epoch: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    message = fails(capsys, "train", ["--config", config, "--train_data_path", data])
    assert str(config) in message and "not valid YAML" in message


def test_a_resume_file_of_an_earlier_version_still_loads(tmp_path):
    """Resume files written before the RNG states became plain data hold a NumPy array: the
    array reconstruction is allowed explicitly, nothing else."""
    state = {"state_dict": {}, "rng": {"numpy": np.random.get_state()}, "epoch": 1}
    torch.save(state, tmp_path / "last.pth")
    loaded = read_resume_state(tmp_path / "last.pth")
    assert np.array_equal(loaded["rng"]["numpy"][1], state["rng"]["numpy"][1])
    with pytest.raises(ValueError, match="refused"):
        read_checkpoint(tmp_path / "last.pth")  # a checkpoint reader allows no NumPy object


UNSAFE = re.compile(r"torch\.load\(|torch\.jit\.load\(|pickle\.loads?\(|np\.load\(|numpy\.load\(|allow_pickle|"
                    r"weights_only\s*=\s*False|yaml\.load\(|yaml\.unsafe_load|marshal\.loads?\(")
# the one weights-only torch reader, and OpenAI's TorchScript archives (TorchScript types only, see docs)
ALLOWED = {("files.py", "torch.load("), ("clip/weights.py", "torch.jit.load(")}


def test_every_load_in_the_package_goes_through_the_safe_reader():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in UNSAFE.finditer(line):
                if (relative, match.group(0)) not in ALLOWED:
                    found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []
    assert "weights_only=True" in (PACKAGE / "files.py").read_text()


def test_refusals_name_the_role_and_say_what_to_do(tmp_path):
    marker = tmp_path / "ran"
    message = str(pytest.raises(ValueError, read_torch_file, plant(tmp_path / "x.pth", marker), "memory bank").value)
    assert message.startswith(f"memory bank {tmp_path / 'x.pth'}") and "re-save its tensors" in message
    truncated = tmp_path / "cut.pth"
    torch.save({"a": torch.zeros(1000)}, tmp_path / "whole.pth")
    truncated.write_bytes((tmp_path / "whole.pth").read_bytes()[:2000])
    message = str(pytest.raises(ValueError, read_torch_file, truncated).value)
    assert "maybe truncated" in message and "\n" not in message
    assert json.dumps(message)  # one plain line
