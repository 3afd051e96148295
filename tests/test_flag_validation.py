"""Flags, config files, devices and interrupts (issue 18 item 5 and 7, issue 19 item 5): every
problem is one line naming the flag (or the file and key) and where the help is, never a
traceback or a silently truthy string."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anomaly_clip.cli import main as cli_main
from anomaly_clip.cli.options import ConfigError
from anomaly_clip.cli.train import build_train_parser
from anomaly_clip.engine.checkpoint import create_detector, save_checkpoint

from faults import ANOMALYCLIP_TRAIN, REPO, TINY, fails, one_line, small_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return small_dataset(tmp_path_factory, seed=2)


@pytest.fixture(scope="module")
def checkpoints(tiny_backbone, tmp_path_factory):
    """Our checkpoint and the official files of each method."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for method, config in (("anomalyclip", {"features_list": (12, 24)}), ("aaclip", {})):
        detector = create_detector(method, backbone=tiny_backbone, config=config)
        paths[method] = save_checkpoint(folder / f"{method}.pth", detector)
        official = folder / f"{method}_official"
        official.mkdir()
        for name, payload in detector.official_checkpoints(epoch=1).items():
            torch.save(payload, official / name)
        paths[f"{method}_official"] = official / "official_epoch_1.pth" if method == "anomalyclip" else official
    return paths


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(text)
    return path


# ---- config files -------------------------------------------------------------------------------

@pytest.mark.parametrize("line, problem", [
    ("epoch: ten", "epoch must be an integer, got 'ten' (str)"),
    ("epoch: 2.5", "epoch must be an integer, got 2.5 (float)"),
    ("random_init: 'false'", "random_init must be true or false (a YAML boolean, unquoted), got 'false' (str)"),
    ("random_init: 'yes'", "random_init must be true or false"),
    ("learning_rate: fast", "learning_rate must be a number, got 'fast'"),
    ("seed: true", "seed must be an integer, got True (bool)"),
    ("seed: null", "seed is empty (null)"),
    ("save_path: true", "save_path must be a string, got True (bool)"),
    ("features_list: [6, x]", "features_list must be an integer or a list of integers, got 'x'"),
    ("metadata: [a, b]", "metadata takes one value, got a list"),
    ("feature_cache: sometimes", "feature_cache must be one of"),
    ("epochz: 3", "unknown train settings ['epochz']"),
])
def test_wrong_values_in_a_config_file_name_the_key_and_the_file(data, tmp_path, capsys, line, problem):
    config = write_config(tmp_path, f"train:\n  {line}\n")
    message = fails(capsys, "train", ["--config", config, "--train_data_path", data, "--save_path", tmp_path / "run"])
    assert message.startswith(f"error: {config}: ") and problem in message
    with pytest.raises(ConfigError, match="settings.yaml"):
        build_train_parser().parse(["--config", str(config), "--train_data_path", "d"])


def test_config_values_that_mean_one_thing_are_accepted(tmp_path, monkeypatch):
    """A single value for a list flag is a one-element list; quoted numbers (what ``${VAR}``
    gives) convert; unquoted YAML booleans are booleans."""
    monkeypatch.setenv("EPOCHS", "3")
    config = write_config(tmp_path, "train:\n  features_list: 24\n  epoch: ${EPOCHS}\n  learning_rate: '1e-4'\n"
                                    "  random_init: false\n  seed: 7.0\n")
    args = build_train_parser().parse(["--config", str(config), "--train_data_path", "d"])
    assert (args.features_list, args.epoch, args.learning_rate, args.random_init, args.seed) == \
        ([24], 3, 1e-4, False, 7)


def test_random_init_false_as_a_string_never_trains_on_random_weights(data, tmp_path, capsys):
    config = write_config(tmp_path, "train:\n  random_init: \"false\"\n  model_name: anomaly-clip-tiny\n")
    fails(capsys, "train", ["--config", config, "--train_data_path", data, "--save_path", tmp_path / "run"])
    assert not (tmp_path / "run").exists()


# ---- flags that contradict each other or the checkpoint --------------------------------------------

def test_random_init_with_weights_path_is_a_conflict(data, tmp_path, capsys):
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "run", "--random_init",
                                      "--weights_path", tmp_path / "ViT-L-14-336px.pt"])
    assert "--random_init and --weights_path" in message and "contradict" in message
    assert message.endswith("see 'anomaly-clip train --help'") and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["test", "predict", "calibrate"])
@pytest.mark.parametrize("stored, asked", [("anomalyclip", "aaclip"), ("aaclip", "anomalyclip"),
                                           ("anomalyclip_official", "aaclip"), ("aaclip_official", "anomalyclip")])
def test_a_checkpoint_of_one_method_with_method_of_the_other_names_both(data, checkpoints, tmp_path, capsys, command,
                                                                        stored, asked):
    path = checkpoints[stored]
    argv = ["--checkpoint_path", path, "--method", asked, *TINY]
    argv += {"test": ["--data_path", data, "--save_path", tmp_path], "predict": ["--input", data, "--save_path",
                                                                                    tmp_path],
             "calibrate": ["--data_path", data, "--output", tmp_path / "c.json"]}[command]
    message = fails(capsys, command, argv)
    assert f"--method {asked}, but {path} holds a model of {stored.split('_')[0]}" in message


@pytest.mark.parametrize("stored, trained", [("anomalyclip", "aaclip"), ("aaclip", "anomalyclip")])
def test_init_checkpoint_of_the_other_method_names_both(data, checkpoints, tmp_path, capsys, stored, trained):
    flags = ["--text_epoch", "1", "--image_epoch", "1", *TINY] if trained == "aaclip" else \
        ["--epoch", "1", *ANOMALYCLIP_TRAIN]
    message = fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "run", "--method", trained,
                                      "--init_checkpoint", checkpoints[stored], *flags])
    assert f"--init_checkpoint {checkpoints[stored]} holds a model of {stored}, but this run trains {trained}" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("command", ["train", "test", "predict", "calibrate"])
def test_device_cuda_without_a_gpu_is_one_line(data, checkpoints, tmp_path, capsys, command):
    argv = {"train": ["--train_data_path", data, "--save_path", tmp_path / "run"],
            "test": ["--data_path", data, "--checkpoint_path", checkpoints["anomalyclip"], "--save_path", tmp_path],
            "predict": ["--input", data, "--checkpoint_path", checkpoints["anomalyclip"], "--save_path", tmp_path],
            "calibrate": ["--data_path", data, "--checkpoint_path", checkpoints["anomalyclip"], "--output",
                          tmp_path / "c.json"]}[command]
    message = fails(capsys, command, [*argv, "--device", "cuda"])
    assert "--device cuda: no CUDA GPU is visible" in message and "--device cpu" in message
    message = fails(capsys, command, [*argv, "--device", "gpu"])
    assert "--device gpu is not a device" in message


REFERENCE_COUNT_PROBLEM = "K must be a positive integer, or a folder of normal images or a saved bank file"


@pytest.mark.parametrize("value", ["-1", "0", "2.5", " 2", "\u00b2"])
def test_a_bad_reference_count_is_one_line_saying_what_k_may_be(data, tmp_path, capsys, monkeypatch, value):
    """``-1``, ``2.5``, `` 2`` were reported as a missing reference folder, ``²`` as ``int()``'s error."""
    monkeypatch.chdir(tmp_path)
    message = fails(capsys, "test", ["--method", "clip", "--data_path", data, "--reference_images", value,
                                     "--save_path", tmp_path / "run", *TINY])
    assert message == f"error: --reference_images {value!r}: {REFERENCE_COUNT_PROBLEM}"


@pytest.mark.parametrize("line", ["reference_images: -1", "reference_images: 2.5"])
def test_a_bad_reference_count_in_a_config_file_is_one_line(data, tmp_path, capsys, line):
    config = write_config(tmp_path, f"test:\n  {line}\n")
    message = fails(capsys, "test", ["--config", config, "--method", "clip", "--data_path", data,
                                     "--save_path", tmp_path / "run", *TINY])
    assert REFERENCE_COUNT_PROBLEM in message


def test_reference_sources_are_told_apart(tmp_path, monkeypatch):
    from anomaly_clip.engine.references import reference_count

    monkeypatch.chdir(tmp_path)
    assert reference_count("2") == 2 and reference_count(3) == 3
    assert reference_count("refs/fabric") is None and reference_count("bank.pt") is None
    (tmp_path / "2.5").mkdir()
    assert reference_count("2.5") is None                   # an existing folder of that name is a folder


@pytest.mark.parametrize("values, count", [(["0", "1", "2"], 3), (["0", "1", "0", "2"], 4), (["0.5"], 1)])
def test_map_range_takes_exactly_two_values(data, checkpoints, tmp_path, capsys, monkeypatch, values, count):
    """``--map_range 0 1 2`` was ``too many values to unpack (expected 2)``, after the images were scored."""
    monkeypatch.chdir(tmp_path)
    message = fails(capsys, "predict", ["--checkpoint_path", checkpoints["anomalyclip"], "--input", data,
                                        "--save_path", tmp_path / "out", "--overlays", "--map_range", *values, *TINY])
    assert message.startswith(f"error: --map_range takes exactly 2 values (LOW HIGH), got {count}: {' '.join(values)}")
    assert list(tmp_path.iterdir()) == []
    config = write_config(tmp_path, "predict:\n  map_range: [0, 1, 2]\n")
    message = fails(capsys, "predict", ["--config", config, "--checkpoint_path", checkpoints["anomalyclip"], "--input",
                                        data, "--save_path", tmp_path / "out", *TINY])
    assert message.startswith(f"error: {config}: map_range takes exactly 2 values (LOW HIGH), got 3")
    from anomaly_clip.cli.predict import build_predict_parser

    help_text = build_predict_parser().format_help()
    assert "--map_range LOW HIGH" in help_text and "LOW HIGH [" not in help_text   # no longer suggests pairs
    parsed = build_predict_parser().parse(["--input", "x", "--map_range", "-1", "2.5"])
    assert list(parsed.map_range) == [-1.0, 2.5]


@pytest.mark.parametrize("command, argv, flag", [
    ("predict", ["--input", "DATA", "--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    ("test", ["--data_path", "DATA", "--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    ("calibrate", ["--data_path", "DATA", "--batch_size", "-3"], "--batch_size must be at least 1, got -3"),
    ("test", ["--data_path", "DATA", "--num_workers", "-1"], "--num_workers must be at least 0, got -1"),
])
def test_impossible_batch_sizes_and_workers_are_one_line_before_any_work(data, checkpoints, tmp_path, capsys,
                                                                         monkeypatch, command, argv, flag):
    """``predict --batch_size 0`` said ``block must be >= 1, got 0``; test and calibrate gave torch's
    own text, after the model was loaded."""
    monkeypatch.chdir(tmp_path)
    argv = [data if arg == "DATA" else arg for arg in argv]
    output = ["--output", tmp_path / "c.json"] if command == "calibrate" else ["--save_path", tmp_path / "out"]
    message = fails(capsys, command, ["--checkpoint_path", checkpoints["anomalyclip"], *argv, *output,
                                      *[arg for arg in TINY if arg not in ("--num_workers", "0")]])
    assert message.startswith(f"error: {flag}; see ") and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "null\n"])
def test_an_empty_config_file_is_one_line_naming_it(data, tmp_path, capsys, text):
    """An empty file was ``Unexpected config:; see 'test.py --help'``."""
    config = write_config(tmp_path, text)
    message = fails(capsys, "test", ["--config", config, "--method", "clip", "--data_path", data,
                                     "--save_path", tmp_path / "run", *TINY])
    assert message.startswith(f"error: {config} is empty: it holds no settings")


# ---- usage errors: one line and where the help is --------------------------------------------------

@pytest.mark.parametrize("command, argv, problem", [
    ("test", ["--data_path", "d"], "--checkpoint_path is required (training-free methods need only --method"),
    ("calibrate", ["--checkpoint_path", "c"], "give either --data_path (a dataset with metadata) or --input"),
    ("calibrate", ["--checkpoint_path", "c", "--input", "x"], "F1-max needs labels, so give --normal_quantile"),
    ("protocol", [], "missing the stage argument"),
    ("summarize", [], "missing the result_dirs argument"),
    ("train", ["--train_data_path", "d", "--epoch", "ten"], "--epoch expects an integer, got 'ten'"),
    ("test", ["--data_path", "d", "--checkpoint_path", "c", "--metrics", "all"], "invalid choice: 'all'"),
])
def test_usage_errors_are_one_line_with_where_the_help_is(capsys, command, argv, problem):
    message = fails(capsys, command, argv)
    assert problem in message and message.endswith("--help'")


@pytest.mark.parametrize("command, argv", [
    ("test", ["--data_path", "d"]), ("test", ["--data_path", "d", "--method", "vand"]),
    ("predict", ["--input", "x"]), ("calibrate", ["--input", "x", "--normal_quantile", "0.99", "--method", "coop"]),
])
def test_a_missing_checkpoint_writes_nothing(capsys, monkeypatch, tmp_path, command, argv):
    """Without --checkpoint_path (and no training-free method) the command stops before it writes
    its log or resolved settings (before: test.py left ./results/test_log.txt and test_config.yaml)."""
    monkeypatch.chdir(tmp_path)
    message = fails(capsys, command, argv)
    assert "--checkpoint_path is required" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, argv", [
    ("test", ["--data_path", "d"]), ("predict", ["--input", "x"]),
    ("calibrate", ["--input", "x", "--normal_quantile", "0.99"]),
])
def test_a_checkpoint_that_cannot_be_read_writes_nothing(capsys, monkeypatch, tmp_path, command, argv):
    """A missing or broken --checkpoint_path is reported before the command writes its log or
    resolved settings (before: test.py left ./results/test_config.yaml, predict its log)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    for checkpoint in ("nowhere.pth", "broken.pth"):
        message = fails(capsys, command, [*argv, "--checkpoint_path", checkpoint])
        assert checkpoint in message
    assert sorted(path.name for path in tmp_path.iterdir()) == ["broken.pth"]


# ---- Ctrl-C while starting -------------------------------------------------------------------------

def test_ctrl_c_while_the_command_loads_is_interrupted_not_a_traceback(capsys, monkeypatch):
    def interrupted_import(name, package=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "import_module", interrupted_import)
    assert fails(capsys, "train", ["--train_data_path", "d"], code=130) == "interrupted"


def test_ctrl_c_while_the_model_is_built_is_interrupted(data, tmp_path, capsys, monkeypatch):
    from anomaly_clip import api

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "load_backbone", interrupted)
    assert fails(capsys, "train", ["--train_data_path", data, "--save_path", tmp_path / "run", *TINY],
                 code=130) == "interrupted"
    assert not (tmp_path / "run" / ".anomaly_clip.lock").exists()


def _torch_is_loading(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see the process load torch")
def test_a_real_sigint_during_imports_prints_interrupted_and_exits_130(data, tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "train.py", "--train_data_path", str(data), "--save_path",
                                str(tmp_path / "run"), *TINY], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _torch_is_loading(process.pid) and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert one_line(stderr) == "interrupted"


def test_output_paths_of_the_wrong_kind_are_named(data, tmp_path, capsys):
    """A file where a folder is needed (and the reverse) names the path and what to do (before: raw
    errno text, for the calibration with a temporary file's name)."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir").mkdir()
    images = ["--input", str(Path(data) / "fabric" / "test" / "good"), *TINY]
    message = fails(capsys, "predict", ["--method", "clip", "--save_path", str(tmp_path / "afile"), *images])
    assert message == f"error: {tmp_path / 'afile'} is a file, where a folder is needed: choose another output folder"
    message = fails(capsys, "calibrate", ["--method", "clip", "--normal_quantile", "1", "--output",
                                          str(tmp_path / "adir"), *images])
    assert message == f"error: {tmp_path / 'adir'} is a folder, where a file is needed: give a file name"


@pytest.mark.parametrize("method", ["anomalyclip", "aaclip", "anomalyclip_adapters", "clip", "clip_ac", "vand", "coop"])
def test_a_block_named_twice_or_below_one_is_refused(method):
    """Every method's features_list (and VAND's few_shot_features) names each 1-based block once:
    a repeated block would have its maps summed twice (before: accepted silently)."""
    from anomaly_clip.engine.registry import find_method

    config_class = find_method(method).config_class
    with pytest.raises(ValueError, match=r"features_list names block\(s\) \[6\] more than once"):
        config_class(features_list=(6, 6))
    with pytest.raises(ValueError, match="features_list must name blocks by their 1-based numbers"):
        config_class(features_list=(0, 6))
    if method == "vand":
        with pytest.raises(ValueError, match="few_shot_features names block"):
            config_class(few_shot_features=(12, 12))
