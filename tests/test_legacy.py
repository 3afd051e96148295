"""Files written before the library was reshaped still work: checkpoints (with former setting
names such as AA-CLIP's ``levels``) load and give the very outputs they gave then, and the
resolved ``train_config.yaml`` / ``test_config.yaml`` of earlier runs parse with the renamed flags.

``tests/data/legacy`` was written once by the code of commit e33d804 (tiny random backbones).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import anomaly_clip
from anomaly_clip.cli.common import backbone_config, method_config_values, training_settings
from anomaly_clip.cli.test import build_test_parser
from anomaly_clip.cli.train import build_train_parser
from anomaly_clip.clip.config import BackboneConfig
from anomaly_clip.engine.registry import find_method

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"


@pytest.fixture(scope="module")
def outputs():
    return torch.load(LEGACY / "outputs.pt", weights_only=True)


@pytest.mark.parametrize("method, class_names", [("anomalyclip", None), ("aaclip", ["bottle", "screw"])])
def test_old_checkpoints_load_and_give_the_same_outputs(outputs, method, class_names):
    stored = torch.load(LEGACY / f"{method}.pth", weights_only=True)
    detector = anomaly_clip.load(LEGACY / f"{method}.pth", device="cpu")
    assert detector.method_name == method
    if method == "aaclip":
        assert "levels" in stored["method_config"] and detector.config.features_list == (12, 24)
    prediction = detector(outputs["images"], class_names)
    scores, maps = outputs[method]
    assert torch.equal(prediction.scores, scores) and torch.equal(prediction.maps, maps)


def test_old_resolved_train_config_parses_with_renamed_flags(tmp_path):
    command = build_train_parser()
    args = command.parse(["--config", str(LEGACY / "aaclip_train_config.yaml"), "--save_path", str(tmp_path)])
    method = find_method(args.method)
    assert method.name == "aaclip" and args.features_list == [12, 24]
    settings = training_settings(args, method)
    assert settings.disentangle_weight == 0.2 and settings.dpam_layers == 18 and settings.text_epoch == 1
    assert method_config_values(args, method)["features_list"] == (12, 24)
    backbone = backbone_config(args, BackboneConfig())
    assert backbone.model_name == "anomaly-clip-tiny" and backbone.random_init and backbone.image_size == 56
    anomalyclip = command.parse(["--config", str(LEGACY / "anomalyclip_train_config.yaml")])
    assert anomalyclip.method == "anomalyclip" and anomalyclip.epoch == 1 and anomalyclip.batch_size == 2


def test_old_resolved_test_config_parses():
    content = yaml.safe_load((LEGACY / "aaclip_test_config.yaml").read_text())
    args = build_test_parser().parse(["--config", str(LEGACY / "aaclip_test_config.yaml")])
    assert args.checkpoint_path == content["test"]["checkpoint_path"] and args.batch_size == 2
    assert args.save_predictions is None and args.metrics == "image-pixel-level"
