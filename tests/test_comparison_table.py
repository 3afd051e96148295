"""The papers' table of every method (rows = datasets, columns = methods, cells ``ours (published)``),
its CSV, runs on data that is not the named dataset, and the protocol scripts run from another folder
with relative paths (issue 19) for training-free and trained baselines together (issue 20)."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from anomaly_clip import cli
from anomaly_clip.cli.protocol import ProtocolError, build_protocol_parser, load_protocol, requested_methods
from anomaly_clip.data.registry import MVTEC_CLASSES, published_classes_problem
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.metrics.published import MethodRun, compare_run, comparison_cells, read_published

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "configs" / "published"
TINY = "--model anomaly-clip-tiny --random-init --image_size 56 --device cpu --num_workers 0"
BASELINES = ("clip", "clip_ac", "winclip", "vand", "coop")


def fake_results(method: str, dataset: str, classes, auroc: float = 0.8, random_init: bool = False) -> dict:
    rows = [{"class": name, "image AUROC": auroc, "pixel AUPRO (compat)": 0.5} for name in classes]
    return {"mean": {"image AUROC": auroc, "pixel AUPRO (compat)": 0.5}, "classes": rows,
            "aupro": {"definition": "compat"},
            "settings": {"method": method, "dataset": dataset, "backbone_config": {"random_init": random_init}}}


def test_data_of_another_dataset_is_named_and_not_compared():
    assert published_classes_problem("mvtec", MVTEC_CLASSES) is None
    assert published_classes_problem("mvtec", ["fabric", "washer"]) == \
        "not MVTec AD data (classes fabric, washer): not comparable"
    assert published_classes_problem("mvtec", ["bottle", "cable"]) == "2 of 15 MVTec AD classes: not the published mean"
    assert published_classes_problem("kvasir", ["anything"]) is None  # the registry lists no classes for it
    reference = read_published(PUBLISHED / "clip.yaml").reference()
    real = {row.metric: row for row in compare_run("r", "mvtec", fake_results("clip", "mvtec", MVTEC_CLASSES),
                                                    reference)}
    assert real["image_auroc"].delta == pytest.approx(80.0 - 74.1) and real["image_auroc"].note == ""
    other = {row.metric: row for row in compare_run("r", "mvtec", fake_results("clip", "mvtec", ["fabric"]),
                                                     reference)}
    assert other["image_auroc"].published == 74.1 and other["image_auroc"].delta is None
    assert "not MVTec AD data" in other["image_auroc"].note


def test_a_few_shot_run_is_not_compared_with_zero_shot_numbers():
    """WinCLIP+ / APRIL-GAN few-shot runs record their normal references; the published columns are
    zero-shot, so such a run gets a note and no delta (before: a delta against zero-shot WinCLIP)."""
    reference = read_published(PUBLISHED / "winclip.yaml").reference()
    results = fake_results("winclip", "mvtec", MVTEC_CLASSES)
    results["settings"]["references"] = {"source": "2", "weight": 0.5,
                                         "images_per_class": {name: 2 for name in MVTEC_CLASSES}}
    rows = {row.metric: row for row in compare_run("r", "mvtec", results, reference)}
    assert rows["image_auroc"].delta is None and rows["image_auroc"].published == reference.value("mvtec",
                                                                                                    "image_auroc")
    assert "few-shot (2 normal references per class) against zero-shot published numbers: not comparable" \
        in rows["image_auroc"].note
    cells = comparison_cells([MethodRun("winclip", "mvtec", results, reference)])
    assert all(cell.delta is None and not cell.comparable for cell in cells if cell.evaluated)


def test_cells_have_every_method_on_every_dataset_with_its_published_value():
    clip = read_published(PUBLISHED / "clip.yaml").reference()
    vand = read_published(PUBLISHED / "vand.yaml").reference()
    runs = [MethodRun("clip", "mvtec", fake_results("clip", "mvtec", MVTEC_CLASSES), clip),
            MethodRun("vand", "mvtec", None, vand),  # not evaluated: published values only
            MethodRun("clip", "visa", None, clip), MethodRun("vand", "visa", None, vand)]
    cells = {(c.dataset, c.class_name, c.metric, c.method): c for c in comparison_cells(runs)}
    auroc = cells[("mvtec", "mean", "image_auroc", "clip")]
    assert (auroc.ours, auroc.published, auroc.evaluated) == (80.0, 74.1, True)
    assert cells[("mvtec", "mean", "image_auroc", "vand")].evaluated is False
    assert cells[("mvtec", "mean", "image_auroc", "vand")].published == vand.value("mvtec", "image_auroc")
    assert ("visa", "mean", "pixel_aupro", "clip") in cells  # published, though nobody ran VisA
    assert not any(metric == "image_f1_max" for _, _, metric, _ in cells)  # not a column of the papers
    per_class = {(c.class_name, c.method): c for c in comparison_cells(runs, per_class=True)
                 if c.dataset == "mvtec" and c.metric == "image_auroc"}
    assert per_class[("bottle", "clip")].ours == 80.0
    assert per_class[("bottle", "clip")].published == clip.class_value("mvtec", "bottle", "image_auroc")
    with pytest.raises(ValueError, match="two runs of clip on mvtec"):
        comparison_cells(runs + runs[:1])


def test_summarize_lays_out_methods_like_the_papers(tmp_path):
    folders = []
    for method, auroc in (("clip", 0.8), ("winclip", 0.9)):
        folder = tmp_path / method / "mvtec"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(fake_results(method, "mvtec", ["fabric"], auroc, True)))
        folders.append(str(folder))
    text = cli.summarize_main(["--layout", "methods", *folders, "--csv", str(tmp_path / "cells.csv")])
    header = next(line for line in text.splitlines() if line.startswith("| dataset"))
    assert [part.strip() for part in header.strip("|").split("|")] == ["dataset", "metric", "clip", "winclip", "note"]
    row = next(line for line in text.splitlines() if "| image AUROC" in line)
    assert "80.0 (74.1)" in row and "90.0 (91.8)" in row
    assert "random weights: meaningless" in row and "not MVTec AD data (classes fabric)" in row
    assert "clip/mvtec was evaluated as mvtec, but not MVTec AD data (classes fabric): not comparable." in text
    with open(tmp_path / "cells.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    clip = next(c for c in cells if (c["method"], c["metric"]) == ("clip", "image_auroc"))
    assert (float(clip["ours"]), float(clip["published"]), clip["delta"], clip["comparable"]) == \
        (80.0, 74.1, "", "False")


def test_each_baseline_has_a_protocol(monkeypatch):
    for method in BASELINES:
        protocol = load_protocol("zero_shot", method)
        assert protocol.training_free == (method in ("clip", "clip_ac", "winclip"))
        assert protocol.test_config.is_file() and "mvtec" in protocol.datasets
    assert load_protocol("zero_shot", "vand").run_for("mvtec").dataset == "visa"
    assert load_protocol("zero_shot", "coop").run_for("btad").dataset == "mvtec"
    with pytest.raises(ProtocolError, match="unknown method 'nope'"):
        load_protocol("zero_shot", "nope")
    monkeypatch.delenv("METHODS", raising=False)
    parser = build_protocol_parser()
    assert requested_methods(parser.parse(["test", "--methods", "clip", "vand", "--per_class"])) == ("clip", "vand")
    assert requested_methods(parser.parse(["test", "--method", "coop"])) == ("coop",)
    assert requested_methods(parser.parse(["test", "--methods", "clip", "vand", "clip"])) == ("clip", "vand")


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    """A folder outside the checkout holding the synthetic set as ``data/synth``."""
    folder = tmp_path_factory.mktemp("caller")
    generate_synthetic_dataset(folder / "data" / "synth", classes=["fabric", "washer"], n_train=2, n_test_normal=2,
                               n_test_anomalous=2, image_size=64, seed=5)
    return folder


def run_script(script: str, folder: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_ROOT") and k not in ("CKPT_DIR", "RESULTS_DIR")}
    env.update({"MVTEC_ROOT": "data/synth", "VISA_ROOT": "data/synth", **variables})
    return subprocess.run(["bash", str(REPO / script)], cwd=folder, env=env, capture_output=True, text=True)


def written_since(folder: Path, start: float) -> list:
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= start] if folder.exists() else []


def test_scripts_from_another_folder_compare_every_baseline_in_one_table(caller):
    start = time.time()
    trained = run_script("train.sh", caller, METHODS="clip vand coop", TRAIN_ARGS=f"{TINY} --epoch 1 --batch_size 4")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    for run in ("vand_visa", "vand_mvtec", "coop_visa", "coop_mvtec"):
        assert (caller / "checkpoints" / run / "epoch_1.pth").is_file()
    assert (caller / "checkpoints" / "vand_mvtec" / "official_epoch_1.pth").is_file()
    assert f"Checkpoints of vand: {caller / 'checkpoints' / 'vand_visa' / 'epoch_1.pth'}" in trained.stdout
    assert "clip is training-free: nothing to train" in trained.stdout
    assert written_since(REPO / "checkpoints", start) == []

    # MVTec AD alone (VisA's root unset): evaluated with the VisA-trained checkpoints
    tested = run_script("test.sh", caller, METHODS=" ".join(BASELINES), TEST_ARGS=f"{TINY} --batch_size 8",
                        VISA_ROOT="")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    results = caller / "results"
    table = (results / "comparison.md").read_text()
    assert table.strip() in tested.stdout and f"Comparison table: {results / 'comparison.md'}" in tested.stdout
    header = next(line for line in table.splitlines() if line.startswith("| dataset"))
    assert [part.strip() for part in header.strip("|").split("|")] == ["dataset", "metric", *BASELINES, "note"]
    published = {method: read_published(PUBLISHED / f"{method}.yaml").reference() for method in BASELINES}
    mvtec_auroc = next(line for line in table.splitlines() if line.startswith("| mvtec") and "| image AUROC" in line)
    for method in BASELINES:  # every column shows the method's published value beside ours
        assert f"({published[method].value('mvtec', 'image_auroc'):.1f})" in mvtec_auroc
    assert "random weights: meaningless" in mvtec_auroc and "not MVTec AD data (classes fabric, washer)" in table
    assert "WARNING: results/vand/mvtec was evaluated as mvtec, but not MVTec AD data" in table
    with open(results / "comparison.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert {c["method"] for c in cells} == set(BASELINES) and all(c["delta"] == "" for c in cells)
    for method in BASELINES:
        content = json.loads((results / method / "mvtec" / "results.json").read_text())
        checkpoint = content["settings"]["checkpoint"]
        assert (checkpoint is None) == (method in ("clip", "clip_ac", "winclip"))
        assert checkpoint is None or checkpoint == str(caller / "checkpoints" / f"{method}_visa" / "epoch_1.pth")
    assert "not MVTec AD data" in (results / "vand" / "summary.md").read_text()
    assert written_since(REPO / "results", start) == []

    early = run_script("train.sh", caller, METHODS="coop aaclip", TRAIN_ARGS="--tiny --epoch 1", CKPT_DIR="early")
    assert early.returncode == 2 and early.stderr.count("error:") == 1
    assert "--epoch is a setting of" in early.stderr and not (caller / "early").exists()  # before coop trained
    missing = run_script("test.sh", caller, METHODS="clip anomalyclip aaclip", TEST_ARGS="--tiny")  # one flag
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert missing.stderr.count("error:") == 1 and "anomalyclip_visa" in missing.stderr \
        and "aaclip_full_shot_visa" in missing.stderr
    wrong = run_script("train.sh", caller, METHODS="vand", VISA_ROOT="data/nothing")
    assert wrong.returncode == 2 and f"VISA_ROOT=data/nothing is not a directory ({caller / 'data' / 'nothing'})" \
        in wrong.stderr


def test_environment_values_of_the_scripts_are_checked(monkeypatch):
    from anomaly_clip.cli.settings import ProtocolSettings

    monkeypatch.setenv("METHODS", "clip, clip vand")
    monkeypatch.setenv("SHOT", "16")
    settings = ProtocolSettings()
    assert settings.methods == ("clip", "vand") and settings.shot == 16
    monkeypatch.setenv("SHOT", "abc")
    with pytest.raises(ValueError, match=r"\$SHOT must be a whole number >= 0, got 'abc'"):
        ProtocolSettings()


def test_summarize_refuses_a_results_file_of_another_shape(tmp_path, capsys):
    """A hand-edited or foreign results.json is one line naming the file and the problem (before:
    a TypeError traceback, or an empty row and exit 0)."""
    for name, content, problem in (("bad", {"metrics": "x", "classes": 5, "mean": None}, "'mean' is NoneType"),
                                   ("other", {"x": 1}, "'mean' is missing"),
                                   ("rows", {"mean": {}, "classes": [{"x": 1}], "settings": {}},
                                    "'classes' holds a row without its 'class'")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(content))
        with pytest.raises(SystemExit) as raised:
            cli.run("summarize", [str(tmp_path / name), "--layout", "methods"])
        error = capsys.readouterr().err.strip()
        assert raised.value.code == 2 and error.count("\n") == 0
        assert f"{tmp_path / name / 'results.json'} is not a results file of test.py ({problem}" in error
