"""Shared fixtures: tiny randomly initialised open_clip backbones (24 image blocks, 12 text blocks)."""
from __future__ import annotations

import pytest
import torch

from anomaly_clip.clip.backbone import BackboneConfig, load_backbone

TINY = "anomaly-clip-tiny"
# command-line flags of the tiny random backbone at 56 px on the CPU
TINY_FLAGS = ["--model", TINY, "--random-init", "--image_size", "56", "--device", "cpu", "--num_workers", "0"]


def tiny_config(**changes) -> BackboneConfig:
    values = dict(model_name=TINY, pretrained=None, random_init=True, image_size=56)
    values.update(changes)
    return BackboneConfig(**values)


@pytest.fixture(scope="session")
def tiny_backbone():
    """QuickGELU, bilinear position-embedding resize (AnomalyCLIP's settings), 56 px native size."""
    torch.manual_seed(0)
    return load_backbone(tiny_config(), device="cpu")


@pytest.fixture(scope="session")
def tiny_backbone_112():
    torch.manual_seed(0)
    return load_backbone(tiny_config(image_size=112), device="cpu")


def train_config(save_path, method=None, **run):
    """A TrainConfig for in-process tests: no worker processes, ``method`` the method's settings."""
    from anomaly_clip.engine.config import TrainConfig

    run.setdefault("num_workers", 0)
    return TrainConfig(save_path=str(save_path), method=method, **run)


@pytest.fixture
def no_network(monkeypatch):
    """The connection check fails and any download attempt fails the test."""
    import open_clip

    from anomaly_clip.clip import weights as weights_module

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights_module, "can_reach", lambda url, timeout=None: False)

    def forbidden(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip, "download_pretrained", forbidden)
