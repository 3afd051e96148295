"""GPU paths: the same detectors on CUDA give the CPU's numbers in float32, and mixed precision
(bf16 / fp16 autocast, similarities and smoothing kept in float32) stays close to them.

Skipped without a CUDA device (CI has none); run on a GPU machine with ``python -m pytest -q``.
"""
from __future__ import annotations

import copy

import pytest
import torch

from anomaly_clip.data.dataset import AnomalyDataset
from anomaly_clip.data.formats import load_samples
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.engine.evaluation import evaluate
from anomaly_clip.engine.precision import autocast
from anomaly_clip.methods.aaclip import AAClipConfig, AAClipDetector
from anomaly_clip import fit
from anomaly_clip.methods.anomalyclip import AnomalyCLIP, AnomalyCLIPConfig, AnomalyCLIPTraining

from conftest import train_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def detectors(backbone):
    torch.manual_seed(1)
    anomalyclip = AnomalyCLIP(backbone, AnomalyCLIPConfig(features_list=(12, 24)))
    aaclip = AAClipDetector(copy.deepcopy(backbone), AAClipConfig(features_list=(6, 12, 18, 24), dataset="mvtec"))
    return {"anomalyclip": anomalyclip, "aaclip": aaclip}


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(2)
    return torch.randn(4, 3, 112, 112)


@pytest.mark.parametrize("name", ["anomalyclip", "aaclip"])
def test_cuda_float32_equals_cpu(tiny_backbone_112, images, name):
    detector = detectors(copy.deepcopy(tiny_backbone_112))[name].eval()
    on_cpu = detector(images, ["bottle"] * 4)
    detector = detector.cuda()
    on_gpu = detector(images.cuda(), ["bottle"] * 4)
    torch.testing.assert_close(on_gpu.scores.cpu(), on_cpu.scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(on_gpu.maps.cpu(), on_cpu.maps, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", ["anomalyclip", "aaclip"])
def test_mixed_precision_stays_close_and_float32(tiny_backbone_112, images, name, precision):
    detector = detectors(copy.deepcopy(tiny_backbone_112))[name].eval().cuda()
    batch = images.cuda()
    reference = detector(batch, ["bottle"] * 4)
    with autocast(detector.device, precision):
        mixed = detector(batch, ["bottle"] * 4)
    assert mixed.scores.dtype == torch.float32 and mixed.maps.dtype == torch.float32
    assert torch.isfinite(mixed.maps).all() and torch.isfinite(mixed.scores).all()
    torch.testing.assert_close(mixed.scores, reference.scores, rtol=0.05, atol=0.02)
    span = float(reference.maps.max() - reference.maps.min())
    assert float((mixed.maps - reference.maps).abs().max()) < 0.05 * max(span, 1e-3)


def test_training_and_evaluation_on_cuda_with_autocast(tiny_backbone_112, tmp_path):
    root = generate_synthetic_dataset(tmp_path / "data", classes=["fabric", "washer"], n_train=2, n_test_normal=3,
                                      n_test_anomalous=3, image_size=128, seed=3)
    samples = load_samples(root, split="test")
    dataset = AnomalyDataset(samples, root, image_size=112)
    detector = AnomalyCLIP(copy.deepcopy(tiny_backbone_112).cuda(), AnomalyCLIPConfig(features_list=(12, 24)))
    history = fit(detector, dataset, train_config(tmp_path / "ckpt", AnomalyCLIPTraining(epoch=2, batch_size=4),
                                                  precision="auto", export_official=False)).stages[""].history
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    report_mixed = evaluate(detector, dataset, batch_size=4, num_workers=0, precision="auto", progress=False)
    report_fp32 = evaluate(detector, dataset, batch_size=4, num_workers=0, precision="fp32", progress=False)
    detector_cpu = copy.deepcopy(detector).cpu()
    report_cpu = evaluate(detector_cpu, dataset, batch_size=4, num_workers=0, precision="fp32", progress=False)
    for gpu_row, cpu_row, mixed_row in zip(report_fp32.rows, report_cpu.rows, report_mixed.rows):
        assert gpu_row.image_auroc == pytest.approx(cpu_row.image_auroc, abs=1e-6)
        # cuDNN runs the patch-embedding convolution in TF32 by default: pixel ranks move a little
        assert gpu_row.pixel_auroc == pytest.approx(cpu_row.pixel_auroc, abs=5e-3)
        assert mixed_row.pixel_auroc == pytest.approx(cpu_row.pixel_auroc, abs=0.05)
