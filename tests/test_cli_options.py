"""The command line's one config mechanism: flags from the settings dataclasses, both spellings,
former names as aliases, flags of another method refused, a checkpoint read once per command."""
from __future__ import annotations

import pytest
import torch

from anomaly_clip import cli
from anomaly_clip.cli.common import training_settings
from anomaly_clip.cli.options import UsageError
from anomaly_clip.cli.test import build_test_parser
from anomaly_clip.cli.train import build_train_parser
from anomaly_clip.engine.checkpoint import save_checkpoint
from anomaly_clip.engine.registry import find_method
from anomaly_clip.methods.aaclip.config import AAClipTraining
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig


def test_every_flag_takes_both_spellings_and_former_names():
    command = build_train_parser()
    base = ["--train_data_path", "data"]
    args = command.parse(base + ["--method", "aaclip", "--text-norm-weight", "0.3", "--surgery_until_layer", "15",
                                 "--levels", "6", "24", "--save-path", "out", "--img_size", "112", "--model", "m"])
    assert (args.features_list, args.save_path, args.image_size, args.model_name) == ([6, 24], "out", 112, "m")
    settings = training_settings(args, find_method("aaclip"))
    assert isinstance(settings, AAClipTraining) and settings.disentangle_weight == 0.3 and settings.dpam_layers == 15
    test = build_test_parser().parse(["--data_path", "d", "--checkpoint_path", "c", "--save-predictions", "p",
                                      "--class_name", "bottle"])
    assert test.save_predictions == "p" and test.reference_class == "bottle"


def test_defaults_and_help_come_from_the_dataclasses():
    args = build_train_parser().parse(["--train_data_path", "data"])
    assert (args.epoch, args.learning_rate, args.seed, args.save_path) == (15, 1e-3, 111, "./checkpoints")
    assert args.n_ctx is None  # method settings: None keeps the method's (or the checkpoint's) value
    text = build_train_parser().format_help()
    assert "weight of the disentangle loss" in text and "--disentangle_weight" in text and "[aaclip]" in text


def test_a_flag_of_another_method_is_one_clear_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("train", ["--train_data_path", str(tmp_path), "--text_epoch", "3"])
    assert exit_info.value.code == 2
    assert "--text_epoch is a setting of aaclip, not of anomalyclip" in capsys.readouterr().err
    shared = build_train_parser().parse(["--train_data_path", "d", "--dpam_layers", "18"])
    from anomaly_clip.cli.common import check_method_flags

    check_method_flags(shared, find_method("anomalyclip"), training=True)  # its config has dpam_layers
    check_method_flags(shared, find_method("aaclip"), training=True)  # its training settings have it
    with pytest.raises(UsageError, match="--sigma is a setting of anomalyclip, clip, clip_ac, coop, not of aaclip"):
        check_method_flags(build_train_parser().parse(["--train_data_path", "d", "--sigma", "2"]),
                           find_method("aaclip"), training=True)
    with pytest.raises(UsageError, match="unrecognized arguments: --no_such_flag"):
        build_train_parser().parse(["--train_data_path", "d", "--no_such_flag", "1"])


def test_a_checkpoint_is_read_once_per_command(tiny_backbone, tmp_path, monkeypatch):
    torch.manual_seed(0)
    detector = AnomalyCLIP(tiny_backbone, AnomalyCLIPConfig(n_ctx=4, depth=3, t_n_ctx=2)).eval()
    checkpoint = save_checkpoint(tmp_path / "model.pth", detector)
    reads = []
    original = torch.load

    def counting(path, *args, **kwargs):
        reads.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 80, 40)).save(images / "a.png")
    cli.predict_main(["--checkpoint_path", str(checkpoint), "--input", str(images), "--save_path",
                      str(tmp_path / "out"), "--device", "cpu", "--num_workers", "0"])
    assert reads.count(str(checkpoint)) == 1


def test_an_unknown_command_is_one_line(capsys):
    from anomaly_clip.cli.main import main

    with pytest.raises(SystemExit) as raised:
        main(["tset"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert raised.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: unknown command 'tset'; did you mean 'test'?") and "export" in lines[0]
