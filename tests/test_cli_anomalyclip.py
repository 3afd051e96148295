"""train.py -> test.py end to end on synthetic data with a tiny model, plus the official-checkpoint path."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from anomaly_clip import cli
from anomaly_clip.data.synthetic import generate_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu",
              "--num_workers", "0"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=2, n_test_normal=3,
                                      n_test_anomalous=3, image_size=64, seed=4)


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory):
    save = tmp_path_factory.mktemp("ckpt")
    last = cli.train_main(["--train_data_path", synthetic_root, "--save_path", str(save), "--epoch", "2",
                       "--batch_size", "4", "--features_list", "12", "24", *TINY_FLAGS])
    return save, last


def test_train_writes_checkpoints_and_log(trained):
    save, last = trained
    assert last == save / "epoch_2.pth"
    log = (save / "log.txt").read_text()
    assert "train epoch [1/2], image_loss:" in log and "seg_loss:" in log
    assert (save / "official_epoch_2.pth").is_file() and (save / "last.pth").is_file()


def test_test_needs_no_architecture_flags_and_writes_outputs(trained, synthetic_root, tmp_path):
    _, last = trained
    predictions = tmp_path / "predictions"
    result = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path", str(tmp_path),
                        "--save-predictions", str(predictions), "--visualize", "--batch_size", "4",
                        "--device", "cpu", "--num_workers", "0"])
    assert result["settings"]["method_config"]["features_list"] == [12, 24] or \
        tuple(result["settings"]["method_config"]["features_list"]) == (12, 24)
    content = json.loads((tmp_path / "results.json").read_text())
    assert [row["class"] for row in content["classes"]] == ["fabric", "washer"]
    assert content["aupro"]["definition"] == "compat"
    assert (tmp_path / "results.csv").is_file()
    for name in ("fabric", "washer"):
        data = np.load(predictions / f"{name}.npz")
        assert data["maps"].dtype == np.float32 and data["maps"].shape == (6, 56, 56)
        assert data["scores"].dtype == np.float32 and data["labels"].tolist() == [0, 0, 0, 1, 1, 1]
        assert all(name in path for path in data["paths"])
    panels = sorted((tmp_path / "heatmaps").rglob("*.jpg"))
    assert len(panels) == 12


def test_saved_predictions_equal_python_api(trained, synthetic_root, tmp_path):
    import anomaly_clip

    _, last = trained
    cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path", str(tmp_path),
               "--save-predictions", str(tmp_path / "p"), "--device", "cpu", "--num_workers", "0",
               "--metrics", "image-level"])
    data = np.load(tmp_path / "p" / "washer.npz")
    model = anomaly_clip.load(last, device="cpu")
    scores, maps = anomaly_clip.Inferencer(model).predict_paths(list(data["paths"]))
    np.testing.assert_allclose(scores.numpy(), data["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps.numpy(), data["maps"], rtol=1e-4, atol=1e-5)


def test_official_checkpoint_through_test_py(trained, synthetic_root, tmp_path):
    save, _ = trained
    result = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(save / "official_epoch_2.pth"),
                        "--save_path", str(tmp_path), "--features_list", "12", "24", "--metrics", "pixel-level",
                        *TINY_FLAGS])
    reference = cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(save / "epoch_2.pth"),
                           "--save_path", str(tmp_path / "own"), "--metrics", "pixel-level", "--device", "cpu",
                           "--num_workers", "0"])
    assert result["report"].mean() == reference["report"].mean()


def test_summarize_gathers_one_table(trained, synthetic_root, tmp_path, capsys):
    _, last = trained
    for name in ("a", "b"):
        cli.test_main(["--data_path", synthetic_root, "--checkpoint_path", str(last), "--save_path", str(tmp_path / name),
                   "--dataset", name, "--device", "cpu", "--num_workers", "0", "--metrics", "image-level"])
    table = cli.summarize_main([str(tmp_path / "a"), str(tmp_path / "b")])
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| run ") and len(rows) == 4
    assert rows[2].startswith(f"| {tmp_path.name}/a ") and rows[3].startswith(f"| {tmp_path.name}/b ")


def test_resume_continues_to_more_epochs(trained, synthetic_root):
    save, _ = trained
    last = cli.train_main(["--train_data_path", synthetic_root, "--save_path", str(save), "--epoch", "3", "--resume",
                       "--batch_size", "4", "--features_list", "12", "24", *TINY_FLAGS])
    assert last == save / "epoch_3.pth"
    assert "Resumed stage 'train'" in (save / "log.txt").read_text() or "Resumed stage" in (save / "log.txt").read_text()


def test_scripts_are_thin_fronts(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, check=True)
    assert "--train_data_path" in out.stdout and "--features_list" in out.stdout
    out = subprocess.run([sys.executable, str(REPO / "test.py"), "--help"], capture_output=True, text=True, check=True)
    assert "--checkpoint_path" in out.stdout and "--save-predictions" in out.stdout


def test_missing_dataset_root_is_reported(tmp_path):
    with pytest.raises(Exception, match=str(tmp_path / "nowhere")):
        cli.train_main(["--train_data_path", str(tmp_path / "nowhere"), "--save_path", str(tmp_path / "o"),
                    "--epoch", "1", *TINY_FLAGS])


def test_train_sh_names_each_missing_root(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT")}
    out = subprocess.run(["bash", str(REPO / "train.sh")], capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "MVTEC_ROOT" in out.stderr and "VISA_ROOT" in out.stderr
