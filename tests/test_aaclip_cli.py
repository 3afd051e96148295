"""``train.py --method aaclip`` then ``test.py`` end to end on the synthetic dataset (tiny random CLIP)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from anomaly_clip.engine.checkpoint import read_checkpoint
from anomaly_clip import cli
from anomaly_clip.data.synthetic import generate_synthetic_dataset

TINY = ["--model", "anomaly-clip-tiny", "--random-init", "--image_size", "56", "--device", "cpu"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=0, n_test_normal=4,
                                      n_test_anomalous=4, image_size=64)


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("aaclip_run")
    last = cli.train_main(["--method", "aaclip", "--dataset", "synthetic", "--train_data_path", synthetic,
                       "--save_path", str(out), "--shot", "4", "--text_epoch", "1", "--image_epoch", "2",
                       "--text_batch_size", "4", "--image_batch_size", "4", "--num_workers", "0",
                       "--seed", "3", *TINY])
    return out, last


def test_train_writes_both_stages(trained):
    out, last = trained
    assert last == out / "image_epoch_2.pth"
    checkpoint = read_checkpoint(last)
    assert checkpoint["method"] == "aaclip" and checkpoint["stage"] == "image"
    assert checkpoint["method_config"]["dataset"] == "synthetic"
    assert checkpoint["backbone_config"]["activation"] == "gelu"
    assert checkpoint["backbone_config"]["pos_embed_interpolation"] == "bicubic_antialias"
    assert checkpoint["run_settings"]["shot"] == 4
    for name in ("text_epoch_1.pth", "text_adapter.pth", "image_adapter.pth", "image_adapter_1.pth",
                 "image_adapter_2.pth", "log.txt"):
        assert (out / name).is_file(), name


def test_test_script_evaluates_our_checkpoint(trained, synthetic, tmp_path):
    _, last = trained
    result = cli.test_main(["--checkpoint_path", str(last), "--data_path", synthetic, "--dataset", "synthetic",
                        "--save_path", str(tmp_path), "--save-predictions", str(tmp_path / "predictions"),
                        "--visualize", "--batch_size", "8", "--num_workers", "0", "--device", "cpu"])
    assert result["settings"]["method"] == "aaclip"
    assert [row.name for row in result["report"].rows] == ["fabric", "washer"]
    saved = np.load(tmp_path / "predictions" / "fabric.npz")
    assert saved["maps"].shape == (8, 56, 56) and saved["maps"].dtype == np.float32
    assert np.isfinite(saved["scores"]).all()
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["method"] == "aaclip"
    assert list((tmp_path / "heatmaps").rglob("*.jpg"))


def test_test_script_reads_the_reference_folder(trained, synthetic, tmp_path):
    out, _ = trained
    result = cli.test_main(["--checkpoint_path", str(out), "--data_path", synthetic, "--dataset", "synthetic",
                        "--save_path", str(tmp_path), "--batch_size", "8", "--num_workers", "0",
                        "--blur_kernel", "3", *TINY])
    assert result["settings"]["method"] == "aaclip"
    assert result["settings"]["method_config"]["blur_kernel"] == 3


def test_training_resumes_without_repeating_a_finished_stage(trained, synthetic):
    out, last = trained
    before = read_checkpoint(last)["state_dict"]
    again = cli.train_main(["--method", "aaclip", "--dataset", "synthetic", "--train_data_path", synthetic,
                        "--save_path", str(out), "--shot", "4", "--text_epoch", "1", "--image_epoch", "2",
                        "--text_batch_size", "4", "--image_batch_size", "4", "--num_workers", "0",
                        "--seed", "3", "--resume", *TINY])
    after = read_checkpoint(again)["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_few_shot_needs_enough_images(synthetic, tmp_path):
    with pytest.raises(ValueError, match="shot"):
        cli.train_main(["--method", "aaclip", "--train_data_path", synthetic, "--save_path", str(tmp_path),
                    "--shot", "40", "--num_workers", "0", *TINY])


def test_anomalyclip_prompts_with_aaclip_adapters_end_to_end(synthetic, tmp_path):
    common = ["--dataset", "synthetic", "--train_data_path", synthetic, "--image_epoch", "1", "--image_batch_size",
              "4", "--num_workers", "0", "--n_ctx", "4", "--depth", "3", "--t_n_ctx", "2", *TINY]
    last = cli.train_main(["--method", "anomalyclip_adapters", "--save_path", str(tmp_path / "both"),
                           "--prompt_epoch", "1", "--prompt_batch_size", "8", *common])
    assert read_checkpoint(last)["method"] == "anomalyclip_adapters"
    prompts = tmp_path / "both" / "prompts" / "epoch_1.pth"
    assert read_checkpoint(prompts)["method"] == "anomalyclip"

    reused = cli.train_main(["--method", "anomalyclip_adapters", "--save_path", str(tmp_path / "reused"),
                             "--prompt_checkpoint", str(prompts), *common])
    trained, taken = read_checkpoint(last)["state_dict"], read_checkpoint(reused)["state_dict"]
    for key in trained:
        if key.startswith("prompt_learner."):
            assert torch.equal(trained[key], taken[key]), key
    assert not (tmp_path / "reused" / "prompts").exists()

    result = cli.test_main(["--checkpoint_path", str(reused), "--data_path", synthetic, "--save_path",
                            str(tmp_path / "results"), "--batch_size", "8", "--num_workers", "0", "--device", "cpu"])
    assert result["settings"]["method"] == "anomalyclip_adapters"
    assert [row.name for row in result["report"].rows] == ["fabric", "washer"]
