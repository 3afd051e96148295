"""Trying it without weights (the tiny backbone preset), checkpoints that carry their backbone,
help that points at a method's own flags, and quiet, readable logs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly_clip import cli
from anomaly_clip.cli.errors import CLI_OPTIONS
from anomaly_clip.cli.options import UsageError
from anomaly_clip.clip import weights as weights_module
from anomaly_clip.clip.backbone import load_backbone
from anomaly_clip.clip.config import TINY_BACKBONE, BackboneConfig
from anomaly_clip.clip.weights import WeightsNotFoundError
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.methods.aaclip import AAClipDetector

REPO = Path(__file__).resolve().parents[1]
RUN = ["--device", "cpu", "--num_workers", "0"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), classes=["fabric"], n_train=2,
                                      n_test_normal=3, n_test_anomalous=3, image_size=64, seed=5)


@pytest.fixture(scope="module")
def tiny_run(synthetic, tmp_path_factory):
    save = tmp_path_factory.mktemp("tiny_run")
    return cli.train_main(["--tiny", "--train_data_path", synthetic, "--save_path", str(save), "--epoch", "1",
                           "--batch_size", "4", "--features_list", "12", "24", *RUN])


def test_the_preset_keeps_the_methods_own_settings():
    tiny = BackboneConfig().tiny()
    assert (tiny.model_name, tiny.random_init, tiny.image_size, tiny.pretrained) == ("anomaly-clip-tiny", True, 112, None)
    assert tiny.is_tiny and not BackboneConfig().is_tiny
    aaclip = AAClipDetector.default_backbone_config().tiny()
    assert aaclip.activation == AAClipDetector.default_backbone_config().activation == "gelu"
    assert aaclip.pos_embed_interpolation == "bicubic_antialias"
    assert all(getattr(aaclip, key) == value for key, value in TINY_BACKBONE.items())


def test_missing_weights_advice_names_the_tiny_backbone(no_network, tmp_path):
    with pytest.raises(WeightsNotFoundError) as caught:
        load_backbone(BackboneConfig(cache_dir=str(tmp_path)))
    assert "BackboneConfig().tiny()" in str(caught.value) and "--tiny" not in str(caught.value)
    advice = caught.value.describe(CLI_OPTIONS)
    assert "--tiny" in advice and "Try it without weights" in advice and "--weights FILE" in advice


def test_the_tiny_model_without_random_init_points_at_tiny(synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run("train", ["--model", "anomaly-clip-tiny", "--train_data_path", synthetic, "--save_path", str(tmp_path),
                          *RUN])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2 and len(errors) == 1
    assert "pretrained tag 'openai' of anomaly-clip-tiny" in errors[0] and "--tiny" in errors[0]


def test_train_without_weights_suggests_tiny_in_one_line(no_network, synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run("train", ["--train_data_path", synthetic, "--save_path", str(tmp_path), "--epoch", "1", "--offline",
                          "--cache-dir", str(tmp_path / "cache"), *RUN])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2 and len(errors) == 1 and "--tiny" in errors[0]


@pytest.mark.parametrize("flags, named", [(["--weights", "ViT-L-14-336px.pt"], "--weights_path"),
                                          (["--model", "ViT-B-16"], "--model_name"),
                                          (["--pretrained", "openai"], "--pretrained")])
def test_tiny_contradicted_by_weight_flags_is_one_line(flags, named, synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run("train", ["--tiny", "--train_data_path", synthetic, "--save_path", str(tmp_path), *flags, *RUN])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2
    assert len(errors) == 1
    assert errors[0].startswith(f"error: --tiny builds the tiny random backbone, which {named} contradicts: drop one "
                                "of them")


def test_tiny_replaces_a_config_files_backbone_but_not_a_flag(caplog):
    """A protocol config names WinCLIP's ViT-B/16+ at 240 px: --tiny replaces those values (and says
    so); the same settings given as flags still conflict with it."""
    from anomaly_clip.cli.common import backbone_config
    from anomaly_clip.cli.test import build_test_parser
    from anomaly_clip.methods.winclip import WinCLIPDetector

    config = ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "winclip" / "zero_shot.yaml"),
              "--data_path", ".", "--dataset", "mvtec", "--save_path", "."]
    plain = build_test_parser().parse(config)
    assert plain.pretrained == "laion400m_e31" and plain.image_size == 240
    with caplog.at_level("INFO", logger="anomaly_clip.cli.options"):
        tiny = build_test_parser().parse([*config, "--tiny"])
    assert tiny.pretrained is None and tiny.image_size is None and tiny.model_name is None
    assert "--tiny replaces the config file's" in caplog.text and "pretrained=laion400m_e31" in caplog.text
    settings = backbone_config(tiny, WinCLIPDetector.default_backbone_config())
    assert settings.model_name == TINY_BACKBONE["model_name"] and settings.image_size == 112 and settings.random_init
    sized = build_test_parser().parse([*config, "--tiny", "--image_size", "56"])
    assert backbone_config(sized, WinCLIPDetector.default_backbone_config()).image_size == 56
    explicit = build_test_parser().parse([*config, "--tiny", "--pretrained", "laion400m_e31"])
    with pytest.raises(UsageError, match="--pretrained contradicts"):
        backbone_config(explicit, WinCLIPDetector.default_backbone_config())


def test_a_tiny_checkpoint_never_asks_for_weights(no_network, tiny_run, synthetic, tmp_path):
    """test / calibrate / predict / --init_checkpoint take the backbone from the checkpoint."""
    payload = torch.load(tiny_run, weights_only=True)
    assert payload["backbone_config"]["model_name"] == "anomaly-clip-tiny" and payload["backbone_config"]["random_init"]
    result = cli.test_main(["--data_path", synthetic, "--checkpoint_path", str(tiny_run), "--save_path",
                            str(tmp_path / "test"), *RUN])
    assert result["settings"]["backbone_config"]["image_size"] == 112
    cli.calibrate_main(["--checkpoint_path", str(tiny_run), "--data_path", synthetic, "--output",
                        str(tmp_path / "cal.json"), *RUN])
    rows = cli.predict_main(["--checkpoint_path", str(tiny_run), "--input", synthetic, "--calibration",
                             str(tmp_path / "cal.json"), "--save_path", str(tmp_path / "pred"), *RUN])
    assert rows and all(row.error == "" for row in rows)
    # fine-tuning from it: method, backbone and architecture come from the checkpoint; flags still override
    last = cli.train_main(["--init_checkpoint", str(tiny_run), "--train_data_path", synthetic, "--save_path",
                           str(tmp_path / "tuned"), "--epoch", "1", "--image_size", "56", *RUN])
    tuned = torch.load(last, weights_only=True)
    assert tuned["method"] == "anomalyclip" and tuned["backbone_config"]["model_name"] == "anomaly-clip-tiny"
    assert tuned["backbone_config"]["image_size"] == 56 and tuple(tuned["method_config"]["features_list"]) == (12, 24)


def test_init_checkpoint_of_another_method_is_one_line(tiny_run, synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run("train", ["--method", "aaclip", "--init_checkpoint", str(tiny_run), "--train_data_path", synthetic,
                          "--save_path", str(tmp_path), *RUN])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2 and len(errors) == 1
    assert "holds a model of anomalyclip, but this run trains aaclip" in errors[0]


def test_the_demo_runs_the_tiny_backbone_on_request(monkeypatch):
    from argparse import Namespace

    from anomaly_clip.cli import demo

    monkeypatch.setattr(weights_module, "locate_weights",
                        lambda config: pytest.fail("--tiny must not look for weights") if not config.random_init else None)
    backbone, pretrained = demo._demo_backbone(Namespace(weights=None, download=False, image_size=None, device="cpu",
                                                         tiny=True))
    assert not pretrained and backbone.config.is_tiny and backbone.config.image_size == 112


def test_train_help_says_how_to_see_one_methods_flags():
    full = subprocess.run([sys.executable, "-m", "anomaly_clip", "train", "--help"], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert full.returncode == 0
    text = " ".join(full.stdout.split())
    assert "'anomaly-clip train --method NAME --help' lists only NAME's" in text and "--tiny" in text
    assert "--n_ctx" in full.stdout and "--text_epoch" in full.stdout
    own = cli.train_main.__globals__["build_train_parser"]("aaclip", only=True).format_help()
    assert "--text_epoch" in own and "--n_ctx" not in own and "--features_list" in own
    assert "--text_epoch" not in cli.train_main.__globals__["build_train_parser"]("anomalyclip", only=True).format_help()


# ---- noise ------------------------------------------------------------------------------------------
def run_logged(arguments, cwd):
    """A command in a subprocess, stdout and stderr in one stream as a terminal shows them."""
    completed = subprocess.run([sys.executable, *arguments], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES=""))
    assert completed.returncode == 0, completed.stdout[-3000:]
    return completed.stdout


def test_one_warning_about_random_weights_and_none_from_open_clip(tiny_run, synthetic, tmp_path):
    output = run_logged(["-m", "anomaly_clip", "predict", "--checkpoint_path", str(tiny_run), "--input", synthetic,
                         "--save_path", str(tmp_path), "--overlays", *RUN], tmp_path)
    assert "No pretrained weights loaded" not in output
    assert output.count("TINY RANDOM backbone") == 1 and output.count("MEANINGLESS") == 1


def test_log_lines_never_run_into_progress_bars(tiny_run, synthetic, tmp_path):
    """A warning logged while the progress bar is drawn (the colour-scale warning of the first
    overlay) goes on a line of its own: no segment between line breaks and carriage returns holds
    both a log record and a bar."""
    output = run_logged(["-m", "anomaly_clip", "predict", "--checkpoint_path", str(tiny_run), "--input", synthetic,
                         "--save_path", str(tmp_path), "--overlays", "--batch_size", "2", *RUN], tmp_path)
    segments = re.split(r"[\r\n]", output)
    records = [s for s in segments if re.search(r"\d{2}:\d{2}:\d{2},\d{3} (INFO|WARNING)", s)]
    assert any("colour scale" in s for s in records) and any("predict:" in s for s in segments)
    mixed = [s for s in records if "%|" in s or "it/s" in s]
    assert mixed == []
    assert all(re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} ", s) for s in records)


def test_aaclip_pseudo_anomaly_line_is_logged_once(synthetic, tmp_path):
    run_logged(["-m", "anomaly_clip", "train", "--method", "aaclip", "--tiny", "--image_size", "56",
                "--train_data_path", synthetic, "--split", "train", "--synthesize_anomalies", "0.5", "--text_epoch",
                "1", "--image_epoch", "1", "--text_batch_size", "2", "--image_batch_size", "2", "--save_path",
                str(tmp_path / "run"), *RUN], tmp_path)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("Pseudo-anomalies:") == 1


def test_resolved_train_config_names_the_method_taken_from_the_checkpoint(tiny_run, synthetic, tmp_path):
    cli.train_main(["--init_checkpoint", str(tiny_run), "--train_data_path", synthetic, "--save_path", str(tmp_path),
                    "--epoch", "1", *RUN])
    assert "method: anomalyclip" in (tmp_path / "train_config.yaml").read_text()
    assert json.loads(json.dumps(torch.load(tmp_path / "epoch_1.pth", weights_only=True)["run_settings"]))[
        "init_checkpoint"] == str(tiny_run)


def test_a_failed_run_ends_its_log_with_the_error(synthetic, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.run("train", ["--tiny", "--train_data_path", synthetic, "--split", "nosuch", "--save_path", str(tmp_path),
                          *RUN])
    error = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert caught.value.code == 2 and len(error) == 1 and "has no split 'nosuch'" in error[0]
    assert (tmp_path / "log.txt").read_text().rstrip().endswith(f"ERROR anomaly_clip: {error[0]}")
