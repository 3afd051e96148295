"""Per-class accumulation and the report tables and files."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from anomaly_clip.metrics import AnomalyEvaluator, ClassMetrics, MetricsReport, binary_ranking_metrics, pixel_metrics


def synthetic_batches(seed: int = 0, batches: int = 4, batch_size: int = 6, size: int = 16):
    """Batches mixing three classes; "all_bad" has only anomalous images (like TN3K or ColonDB)."""
    generator = torch.Generator().manual_seed(seed)
    names = ["bottle", "screw", "all_bad"]
    for _ in range(batches):
        classes = [names[int(i)] for i in torch.randint(0, 3, (batch_size,), generator=generator)]
        masks = torch.rand(batch_size, size, size, generator=generator) > 0.9
        labels = masks.flatten(1).any(1).long()
        for i, name in enumerate(classes):
            if name == "all_bad":
                masks[i, :3, :3] = True
                labels[i] = 1
        maps = torch.rand(batch_size, size, size, generator=generator) + 0.5 * masks
        scores = maps.flatten(1).amax(1)
        yield classes, labels, scores, maps, masks


def test_evaluator_equals_direct_computation_per_class():
    evaluator = AnomalyEvaluator(metrics="image-pixel-level", aupro="exact")
    seen = {}
    for classes, labels, scores, maps, masks in synthetic_batches():
        evaluator.update(classes, labels, scores, maps, masks)
        for i, name in enumerate(classes):
            entry = seen.setdefault(name, ([], [], [], []))
            for part, value in zip(entry, (labels[i], scores[i], maps[i], masks[i])):
                part.append(value)
    report = evaluator.compute()
    assert [row.name for row in report.rows] == list(seen)
    for row in report.rows:
        labels, scores, maps, masks = (torch.stack(part) for part in seen[row.name])
        image = binary_ranking_metrics(scores, labels)
        pixel = pixel_metrics(maps, masks, aupro="exact")
        assert row.num_images == len(labels) and row.num_anomalous_images == int(labels.sum())
        for got, expected in ((row.image_auroc, image.auroc), (row.image_ap, image.average_precision),
                              (row.image_f1_max, image.f1_max), (row.pixel_auroc, pixel.auroc),
                              (row.pixel_ap, pixel.average_precision), (row.pixel_f1_max, pixel.f1_max),
                              (row.pixel_aupro, pixel.aupro)):
            assert got == pytest.approx(expected, nan_ok=True, abs=1e-12)
    all_bad = next(row for row in report.rows if row.name == "all_bad")
    assert math.isnan(all_bad.image_auroc) and math.isnan(all_bad.image_ap)
    assert not math.isnan(all_bad.pixel_auroc)


def test_evaluator_keeps_compact_host_copies():
    evaluator = AnomalyEvaluator(map_dtype=torch.float16)
    classes, labels, scores, maps, masks = next(synthetic_batches())
    evaluator.update(classes, labels, scores, maps.double(), masks.float())
    data = next(iter(evaluator._classes.values()))
    assert data.maps[0].dtype == torch.float16 and data.masks[0].dtype == torch.bool
    assert data.maps[0].device.type == "cpu"
    report = evaluator.compute()
    assert report.aupro_definition == "compat"


def test_evaluator_levels_and_errors():
    classes, labels, scores, maps, masks = next(synthetic_batches())
    image_only = AnomalyEvaluator(metrics="image-level")
    image_only.update(classes, labels, scores)
    report = image_only.compute()
    assert [label for _, label in report.columns] == ["image AUROC", "image AP", "image F1-max"]
    assert report.rows[0].pixel_auroc is None

    pixel_only = AnomalyEvaluator(metrics="pixel-level")
    with pytest.raises(ValueError, match="needs maps and masks"):
        pixel_only.update(classes, labels, scores)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pixel_only.update(classes, labels, scores, maps.masked_fill(masks, float("inf")), masks)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pixel_only.update(classes, labels, scores.clone().fill_(float("nan")), maps, masks)
    with pytest.raises(ValueError, match="class names"):
        pixel_only.update(classes[:-1], labels, scores, maps, masks)
    with pytest.raises(ValueError, match="no predictions"):
        AnomalyEvaluator().compute()
    with pytest.raises(ValueError, match="metrics must be"):
        AnomalyEvaluator(metrics="everything")
    with pytest.raises(ValueError, match="unknown AUPRO"):
        AnomalyEvaluator(aupro="fast")
    with pytest.raises(ValueError, match="map_dtype"):
        AnomalyEvaluator(map_dtype=torch.int8)


def cells(line: str) -> list:
    return [cell.strip() for cell in line.split("|")[1:-1]]


def sample_report() -> MetricsReport:
    rows = [
        ClassMetrics("bottle", 10, 6, 0.91234, 0.95, 0.9, 0.981, 0.5, 0.55, 0.876),
        ClassMetrics("tn3k", 8, 8, float("nan"), float("nan"), float("nan"), 0.7, 0.4, 0.45, 0.6),
    ]
    return MetricsReport(rows, metrics="image-pixel-level", aupro_definition="compat")


def test_markdown_table_is_percent_with_one_decimal_and_names_the_aupro():
    text = sample_report().to_markdown()
    lines = text.splitlines()
    assert lines[0].startswith("AUPRO: compat (AnomalyCLIP")
    assert "200 thresholds" in lines[0] and "FPR limit 0.3" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert cells(table[0]) == ["class", "image AUROC", "image AP", "image F1-max", "pixel AUROC", "pixel AP",
                               "pixel F1-max", "pixel AUPRO (compat)"]
    assert table[1].startswith("|:--") and table[1].endswith("--:|")
    assert cells(table[2]) == ["bottle", "91.2", "95.0", "90.0", "98.1", "50.0", "55.0", "87.6"]
    assert cells(table[3]) == ["tn3k", "N/A", "N/A", "N/A", "70.0", "40.0", "45.0", "60.0"]
    # The mean skips N/A: image metrics come from bottle alone.
    assert cells(table[4]) == ["mean", "91.2", "95.0", "90.0", "84.0", "45.0", "50.0", "73.8"]


def test_all_not_applicable_mean_is_not_applicable():
    report = MetricsReport([ClassMetrics("a", 2, 2, float("nan"), float("nan"), float("nan"))], metrics="image-level")
    assert report.mean() == {"image AUROC": None, "image AP": None, "image F1-max": None}
    assert "AUPRO" not in report.to_markdown()


def test_save_writes_json_csv_and_markdown_with_settings(tmp_path):
    report = sample_report()
    paths = report.save(tmp_path / "out", {"dataset": "mvtec", "layers": (24,), "checkpoint": tmp_path})
    content = json.loads(paths["json"].read_text())
    assert content["settings"]["dataset"] == "mvtec" and content["settings"]["layers"] == [24]
    assert content["aupro"]["definition"] == "compat" and content["aupro"]["num_thresholds"] == 200
    assert content["classes"][1]["image AUROC"] is None
    assert content["classes"][0]["pixel AUPRO (compat)"] == pytest.approx(0.876)
    assert content["mean"]["pixel AUROC"] == pytest.approx((0.981 + 0.7) / 2)
    with paths["csv"].open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:4] == ["class", "images", "anomalous_images", "image AUROC (%)"]  # percent, as the tables
    assert all(header.endswith("(%)") for header in rows[0][3:])
    assert rows[2][3] == "N/A"
    assert float(rows[1][3]) == pytest.approx(91.234)
    assert rows[3][:3] == ["mean", "18", "14"]
    table_mean = next(line for line in report.to_markdown().splitlines() if line.startswith("| mean"))
    assert [f"{float(v):.1f}" for v in rows[3][3:]] == [cell.strip() for cell in table_mean.split("|")[2:-1]]
    assert paths["markdown"].read_text().strip() == report.to_markdown()


def test_report_of_real_evaluation_round_trips(tmp_path):
    evaluator = AnomalyEvaluator(aupro="exact")
    for batch in synthetic_batches(seed=3):
        evaluator.update(*batch)
    report = evaluator.compute()
    report.save(tmp_path, {"seed": 3})
    content = json.loads((tmp_path / "results.json").read_text())
    assert content["aupro"]["definition"] == "exact"
    assert "pixel AUPRO (exact)" in content["mean"]
    assert len(content["classes"]) == len(report.rows)
    assert np.isfinite(content["mean"]["pixel AUPRO (exact)"])


def test_class_score_transform_sees_whole_class_peaks_and_floors():
    seen = {}

    def transform(scores, peaks, floors):
        seen["args"] = (scores.clone(), peaks.clone(), floors.clone())
        return peaks  # rank images by their map maximum

    evaluator = AnomalyEvaluator(metrics="image-level", class_score_transform=transform)
    maps = torch.zeros(4, 3, 3)
    maps[1, 0, 0], maps[3, 2, 2], maps[0, 1, 1] = 5.0, 7.0, -1.0
    labels = torch.tensor([0, 1, 0, 1])
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2])
    evaluator.update(["a", "a"], labels[:2], scores[:2], maps[:2])
    evaluator.update(["a", "a"], labels[2:], scores[2:], maps[2:])
    report = evaluator.compute()
    assert report.rows[0].image_auroc == 1.0  # the raw scores would give 0.0
    torch.testing.assert_close(seen["args"][1], torch.tensor([0.0, 5.0, 0.0, 7.0], dtype=torch.float64))
    torch.testing.assert_close(seen["args"][2], torch.tensor([-1.0, 0.0, 0.0, 0.0], dtype=torch.float64))
