"""Protocol configs, --config precedence, published tables, summarize --compare and the
protocol scripts (train.sh / test.sh) end to end on synthetic data with a tiny model."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from anomaly_clip import cli
from anomaly_clip.cli.options import ConfigError, expand_variables, section_values
from anomaly_clip.cli.protocol import load_protocol
from anomaly_clip.cli.test import build_test_parser
from anomaly_clip.cli.train import build_train_parser
from anomaly_clip.data.registry import get_dataset_info
from anomaly_clip.data.synthetic import generate_synthetic_dataset
from anomaly_clip.metrics.published import METRIC_LABELS, compare_run, read_published

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
from conftest import TINY_FLAGS



@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return generate_synthetic_dataset(root, classes=["fabric", "washer"], n_train=2, n_test_normal=2,
                                      n_test_anomalous=2, image_size=64, seed=5)


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_every_protocol_file_parses_against_its_parser(monkeypatch):
    monkeypatch.setenv("VISA_ROOT", "/data/visa")
    monkeypatch.setenv("MVTEC_ROOT", "/data/mvtec")
    monkeypatch.setenv("TN3K_ROOT", "/data/tn3k")
    monkeypatch.setenv("COLONDB_ROOT", "/data/colondb")
    monkeypatch.setenv("DATASET", "mvtec")
    monkeypatch.setenv("DATA_ROOT", "/data/mvtec")
    files = sorted(CONFIGS.glob("*/*.yaml"))
    protocol_files = [f for f in files if f.parent.name != "published" and f.name != "protocol.yaml"]
    assert len(protocol_files) >= 15
    for file in protocol_files:
        content = yaml.safe_load(file.read_text())
        if "train" in content:
            values = build_train_parser().parse(["--config", str(file)])
            assert values.method == content["method"] and values.train_data_path.startswith("/data/")
        values = build_test_parser().parse(["--config", str(file)])
        assert values.method == content["method"] and values.data_path.startswith("/data/")
        published = read_published(CONFIGS / "published" / f"{content['method']}.yaml")
        assert content["published"] in published.references, file


def test_released_anomalyclip_setting_is_in_the_config(monkeypatch):
    monkeypatch.setenv("VISA_ROOT", "/data/visa")
    values = section_values(CONFIGS / "anomalyclip" / "visa_to_mvtec.yaml", "train")
    assert {k: values[k] for k in ("features_list", "image_size", "batch_size", "epoch", "depth", "n_ctx",
                                   "t_n_ctx")} == {"features_list": [24], "image_size": 518, "batch_size": 8,
                                                   "epoch": 15, "depth": 9, "n_ctx": 12, "t_n_ctx": 4}
    assert values["train_data_path"] == "/data/visa" and values["dataset"] == "visa"


def test_variables_expand_with_nested_defaults(monkeypatch):
    monkeypatch.delenv("CKPT_X", raising=False)
    monkeypatch.setenv("CKPT_DIR", "/ck")
    assert expand_variables("${CKPT_X:-${CKPT_DIR:-./checkpoints}/epoch_15.pth}") == "/ck/epoch_15.pth"
    monkeypatch.delenv("CKPT_DIR")
    assert expand_variables("${CKPT_X:-${CKPT_DIR:-./checkpoints}/e.pth}") == "./checkpoints/e.pth"
    monkeypatch.setenv("CKPT_X", "/given.pth")
    assert expand_variables(["${CKPT_X:-x}", 3]) == ["/given.pth", 3]
    unset = expand_variables("${NOT_SET_ANYWHERE_123}/x")
    assert unset.variable == "NOT_SET_ANYWHERE_123"


def test_command_line_overrides_config_and_run_writes_resolved_config(synthetic_root, tmp_path):
    config = write_yaml(tmp_path / "run.yaml", {"method": "anomalyclip", "train": {
        "train_data_path": synthetic_root, "epoch": 3, "batch_size": 4, "features_list": [12, 24], "n_ctx": 6}})
    save = tmp_path / "out"
    last = cli.train_main(["--config", str(config), "--epoch", "1", "--save_path", str(save), *TINY_FLAGS])
    assert last == save / "epoch_1.pth"
    resolved = yaml.safe_load((save / "train_config.yaml").read_text())
    assert resolved["method"] == "anomalyclip"
    assert resolved["train"]["epoch"] == 1 and resolved["train"]["n_ctx"] == 6
    assert resolved["train"]["features_list"] == [12, 24]
    checkpoint = __import__("torch").load(last, weights_only=False)
    assert checkpoint["method_config"]["n_ctx"] == 6
    again = cli.train_main(["--config", str(save / "train_config.yaml"), "--save_path", str(tmp_path / "again")])
    assert again == tmp_path / "again" / "epoch_1.pth"


def test_config_errors_name_the_problem(synthetic_root, tmp_path, monkeypatch):
    bad_key = write_yaml(tmp_path / "bad.yaml", {"train": {"train_data_path": synthetic_root, "epochz": 3}})
    with pytest.raises(ConfigError, match="unknown train settings \\['epochz'\\]"):
        cli.train_main(["--config", str(bad_key), *TINY_FLAGS])
    monkeypatch.delenv("SOME_UNSET_ROOT", raising=False)
    unset = write_yaml(tmp_path / "unset.yaml", {"train": {"train_data_path": "${SOME_UNSET_ROOT}"}})
    with pytest.raises(ConfigError, match=r"\$SOME_UNSET_ROOT is not set.*--train_data_path"):
        cli.train_main(["--config", str(unset), "--save_path", str(tmp_path / "x"), *TINY_FLAGS])
    test_only = write_yaml(tmp_path / "test_only.yaml", {"test": {"metrics": "image-level"}})
    with pytest.raises(ConfigError, match="has no 'train:' section"):
        cli.train_main(["--config", str(test_only), *TINY_FLAGS])
    wrong_choice = write_yaml(tmp_path / "choice.yaml", {"train": {"train_data_path": synthetic_root,
                                                                    "feature_cache": "gpu"}})
    with pytest.raises(ConfigError, match="feature_cache must be one of"):
        cli.train_main(["--config", str(wrong_choice), *TINY_FLAGS])


def test_train_help_shows_config():
    assert "--config FILE" in build_train_parser().format_help()


def test_published_tables_use_known_datasets_and_metrics():
    for path in sorted((CONFIGS / "published").glob("*.yaml")):
        tables = read_published(path)
        assert tables.default_reference in tables.references
        for reference in tables.references.values():
            assert reference.results, f"{path}: {reference.name} is empty"
            for dataset, values in reference.results.items():
                assert get_dataset_info(dataset).name == dataset
                assert set(values) <= set(METRIC_LABELS)
                assert all(0 < v <= 100 for v in values.values())
    anomalyclip = read_published(CONFIGS / "published" / "anomalyclip.yaml").reference("zero_shot")
    assert anomalyclip.value("mvtec", "image_auroc") == 91.5 and anomalyclip.aupro == "compat"
    assert len(anomalyclip.results) == 17


def test_compare_rows_compute_delta_and_notes():
    reference = read_published(CONFIGS / "published" / "anomalyclip.yaml").reference()
    results = {"mean": {"image AUROC": 0.90, "pixel AUPRO (exact)": 0.80, "pixel AP": None},
               "aupro": {"definition": "exact"}, "settings": {"backbone_config": {"random_init": True}}}
    rows = {row.metric: row for row in compare_run("run", "mvtec", results, reference)}
    assert rows["image_auroc"].delta == pytest.approx(90.0 - 91.5)
    assert rows["pixel_aupro"].published == 81.4
    assert "AUPRO definitions differ (ours exact, published compat)" in rows["pixel_aupro"].note
    assert "random weights" in rows["image_auroc"].note
    assert rows["pixel_ap"].ours is None and rows["pixel_ap"].published is None and rows["pixel_ap"].delta is None


def fake_results(directory: Path, dataset: str, auroc: float, random_init: bool = False) -> Path:
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({
        "mean": {"image AUROC": auroc}, "settings": {"method": "anomalyclip", "dataset": dataset,
                                                      "backbone_config": {"random_init": random_init}}}))
    return directory


def test_summarize_labels_rows_by_run_and_formats_numbers(tmp_path, capsys):
    first = fake_results(tmp_path / "runA" / "synthetic", "synthetic", 0.8123)
    second = fake_results(tmp_path / "runB" / "synthetic", "synthetic", 0.75, random_init=True)
    table = cli.summarize_main([str(first), str(second)])
    assert "runA/synthetic" in table and "runB/synthetic" in table
    assert "81.2" in table and "75.0" in table
    assert "random weights: meaningless" in table and "their numbers are meaningless" in table


def test_summarize_missing_folder_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run("summarize", [str(tmp_path / "nothing")])
    assert exit_info.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_aaclip_protocol_picks_the_shot_configuration():
    protocol = load_protocol("zero_shot", "aaclip", shot=16)
    assert protocol.test_config.name == "shot_16.yaml"
    assert protocol.run_for("visa").dataset == "mvtec" and protocol.run_for("btad").dataset == "visa"
    assert protocol.runs["visa"].name == "aaclip_shot_16_visa"
    anomalyclip = load_protocol("zero_shot", "anomalyclip")
    assert anomalyclip.run_for("mvtec").dataset == "visa" and anomalyclip.run_for("kvasir").dataset == "mvtec"


def test_protocol_scripts_train_then_test_with_compare_table(synthetic_root, tmp_path):
    env = {**os.environ, "MVTEC_ROOT": synthetic_root, "VISA_ROOT": synthetic_root, "CKPT_DIR": str(tmp_path / "ck"),
           "RESULTS_DIR": str(tmp_path / "res"), "TRAIN_ARGS": " ".join(TINY_FLAGS + ["--epoch", "1", "--batch_size", "4"]),
           "TEST_ARGS": "--device cpu --num_workers 0 --batch_size 4"}
    for name in ("MPDD_ROOT", "BTAD_ROOT", "TN3K_ROOT"):
        env.pop(name, None)
    trained = subprocess.run(["bash", "train.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "ck" / "anomalyclip_visa" / "epoch_1.pth").is_file()
    assert (tmp_path / "ck" / "anomalyclip_mvtec" / "train_config.yaml").is_file()
    tested = subprocess.run(["bash", "test.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stderr[-2000:]
    summary = (tmp_path / "res" / "anomalyclip" / "summary.md").read_text()
    assert "| anomalyclip/mvtec | mvtec" in summary and "| anomalyclip/visa  | visa" in summary
    assert "91.5" in summary and "random weights: meaningless" in summary
    results = json.loads((tmp_path / "res" / "anomalyclip" / "mvtec" / "results.json").read_text())
    assert results["settings"]["checkpoint"].endswith("anomalyclip_visa/epoch_1.pth")
    assert results["settings"]["published_reference"] == "zero_shot"
    missing = subprocess.run(["bash", "train.sh"], cwd=REPO, capture_output=True, text=True,
                             env={k: v for k, v in env.items() if k != "VISA_ROOT"})
    assert missing.returncode == 2 and "set VISA_ROOT" in missing.stderr and "Traceback" not in missing.stderr
