"""``anomaly-clip protocol {train,test}``: run a published protocol from its config files.

A protocol file (``configs/zero_shot_suite.yaml``, ``configs/tn3k/protocol.yaml``) names the
datasets with the environment variable holding each root and, per method, its training runs
(config file + training set) and which run's checkpoint evaluates which dataset; a training-free
method (CLIP, CLIP-AC, WinCLIP) has a test config only. ``train`` runs every training run of each
method asked for; ``test`` evaluates every dataset whose root is set with each method, then prints
one table laid out like the papers' (rows = datasets, columns = methods, each cell
``ours (published)``) and writes it with a CSV of its cells. ``train.sh`` and ``test.sh`` are thin
wrappers around these commands.

Every relative path (dataset roots, ``CKPT_DIR``, ``RESULTS_DIR``, ``CKPT_<SET>``, a protocol
file) is taken relative to the folder the command runs in, never the repository's; outputs default
to ``./checkpoints`` and ``./results`` there, and are logged as absolute paths.
"""
from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..engine.config import TrainConfig
from ..engine.registry import find_method
from ..resources import configs_dir
from .common import setup_logging
from .options import CommandParser, UsageError, dataclass_flags, read_config_file
from .settings import EvaluationSettings, ProtocolSettings
from .summarize import caveat_lines, comparison_text, load_runs, methods_text, published_tables, write_cells_csv
from .test import test_main
from .train import train_main

logger = logging.getLogger(__name__)

PROTOCOLS = {"zero_shot": "zero_shot_suite.yaml", "tn3k": "tn3k/protocol.yaml"}
TABLE_FILE, CELLS_FILE, RUN_SUMMARY_FILE = "comparison.md", "comparison.csv", "summary.md"


class ProtocolError(UsageError):
    """The protocol cannot run as asked (missing roots, checkpoints or files)."""


@dataclass(frozen=True)
class TrainingRun:
    name: str          # folder name under the checkpoint directory, e.g. anomalyclip_visa
    dataset: str       # training set
    root_variable: str
    config: Path


@dataclass(frozen=True)
class Protocol:
    method: str
    setting: str
    datasets: Dict[str, str]            # dataset -> root variable
    runs: Dict[str, TrainingRun]        # training set -> run (empty: a training-free method)
    evaluated_with: Dict[str, str]      # dataset -> training set ("default" for the rest)
    test_config: Path
    source: Path

    @property
    def training_free(self) -> bool:
        return not self.runs

    @property
    def results_name(self) -> str:
        """Folder of the method's results under the results directory (``aaclip_shot_16``)."""
        return "_".join(part for part in (self.method, self.setting) if part)

    def run_for(self, dataset: str) -> TrainingRun:
        source = self.evaluated_with.get(dataset, self.evaluated_with.get("default"))
        if source not in self.runs:
            raise ProtocolError(f"{self.source}: no training run {source!r} to evaluate {dataset}")
        return self.runs[source]


def caller_path(path: str | os.PathLike) -> Path:
    """``path`` made absolute against the folder the command runs in (``~`` expanded)."""
    return Path(os.path.abspath(os.path.expanduser(str(path))))


def shot_setting(shot: int) -> str:
    return "full_shot" if shot == 0 else f"shot_{shot}"


def protocol_path(protocol: str) -> Path:
    """The file of a named protocol (:data:`PROTOCOLS`) under ``configs/``, or a protocol file given
    by the user (relative to the caller's folder)."""
    if protocol in PROTOCOLS:
        return configs_dir() / PROTOCOLS[protocol]
    path = caller_path(protocol)
    if not path.is_file():
        raise ProtocolError(f"protocol {protocol!r} is neither a known protocol ({', '.join(PROTOCOLS)}) nor a file "
                            f"({path} not found)")
    return path


def load_protocol(protocol: str, method: str, shot: int = 0) -> Protocol:
    """Read a protocol (a name from :data:`PROTOCOLS` or a file path) for one method. Config files
    it names are looked up beside the protocol file, then under ``configs/``."""
    path = protocol_path(protocol)
    content = read_config_file(path)
    methods = content.get("methods") or {}
    try:
        spec = find_method(method)
    except KeyError as error:
        raise ProtocolError(str(error.args[0])) from None
    canonical = spec.name
    if canonical not in methods:
        raise ProtocolError(f"{path} has no protocol for method {canonical!r} (it has {sorted(methods)})")
    entry = methods[canonical]
    uses_shot = "{shot}" in str(entry)
    setting = shot_setting(shot) if uses_shot else ""
    folders = list(dict.fromkeys([path.parent, configs_dir()]))

    def config_file(template: str) -> Path:
        name = template.format(shot=setting)
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise ProtocolError(f"{path}: config file {name} not found under {' or '.join(map(str, folders))}"
                            + (f" (shot {shot} has no configuration)" if uses_shot else ""))

    training_runs = entry.get("training_runs") or {}
    if spec.training_free and training_runs:
        raise ProtocolError(f"{path}: {canonical} is training-free, but its protocol lists training runs")
    if not spec.training_free and not training_runs:
        raise ProtocolError(f"{path}: {canonical} has learnt parts, but its protocol lists no training runs")
    runs = {}
    for dataset, run in training_runs.items():
        name = run.get("name") or "_".join(part for part in (canonical, setting, dataset) if part)
        runs[dataset] = TrainingRun(name, dataset, run["root"], config_file(run["config"]))
    return Protocol(method=canonical, setting=setting, datasets=dict(content.get("datasets") or {}), runs=runs,
                    evaluated_with=dict(entry.get("evaluated_with") or {}),
                    test_config=config_file(entry["test_config"]), source=path)


def dataset_root(variable: str) -> Optional[Path]:
    """The absolute dataset root named by environment variable ``variable``, None when unset."""
    value = os.environ.get(variable, "")
    return caller_path(value) if value else None


def output_dir(variable: str, default: str) -> Path:
    """``$variable`` or ``default``, absolute (relative paths are the caller's)."""
    return caller_path(os.environ.get(variable) or default)


def _checkpoint_dir() -> Path:
    return output_dir("CKPT_DIR", TrainConfig().save_path)


def train_argv(protocol: Protocol, run: TrainingRun, root: Path, save: Path, extra: Sequence[str]) -> List[str]:
    """The ``train.py`` flags of one training run."""
    return ["--config", str(run.config), "--method", protocol.method, "--dataset", run.dataset,
            "--train_data_path", str(root), "--save_path", str(save), *extra]


def test_argv(protocol: Protocol, dataset: str, root: Path, save: Path, checkpoint: Optional[Path],
              extra: Sequence[str]) -> List[str]:
    """The ``test.py`` flags evaluating ``protocol.method`` on ``dataset``."""
    argv = ["--config", str(protocol.test_config), "--method", protocol.method, "--dataset", dataset,
            "--data_path", str(root), "--save_path", str(save)]
    return argv + (["--checkpoint_path", str(checkpoint)] if checkpoint is not None else []) + list(extra)


def run_training(protocol: Protocol, extra: Sequence[str]) -> List[Path]:
    """Every training run of the protocol; all roots must be set (each missing one is named). A
    training-free method has nothing to train."""
    if protocol.training_free:
        logger.info("%s is training-free: nothing to train (test.sh evaluates it directly)", protocol.method)
        return []
    problems = []
    for run in protocol.runs.values():
        root = dataset_root(run.root_variable)
        if root is None:
            problems.append(f"set {run.root_variable} to the {run.dataset} dataset root (with its metadata file; "
                            "see docs/datasets.md)")
        elif not root.is_dir():
            problems.append(f"{run.root_variable}={os.environ[run.root_variable]} is not a directory ({root})")
    if problems:
        raise ProtocolError("; ".join(problems))
    written = []
    for run in protocol.runs.values():
        argv = train_argv(protocol, run, dataset_root(run.root_variable), _checkpoint_dir() / run.name, extra)
        logger.info("Training run %s: train.py %s", run.name, shlex.join(argv))
        written.append(caller_path(train_main(argv)))
    logger.info("Checkpoints of %s: %s", protocol.method, ", ".join(str(p) for p in written))
    return written


def checkpoint_for(protocol: Protocol, run: TrainingRun) -> Path:
    """``CKPT_<TRAINING SET>`` if set, else the final checkpoint written by ``protocol train``."""
    variable = f"CKPT_{run.dataset.upper().replace('-', '_')}"
    if os.environ.get(variable):
        return caller_path(os.environ[variable])
    folder = _checkpoint_dir() / run.name
    from ..engine.training import final_checkpoint

    found = final_checkpoint(folder, find_method(protocol.method).final_stage)
    if found is None:
        raise ProtocolError(f"no checkpoint in {folder} for the {run.dataset}-trained {protocol.method} model: run "
                            f"train.sh (or `anomaly-clip protocol train`) first, or set {variable}")
    return found


def evaluated_roots(datasets: Dict[str, str]) -> Dict[str, Path]:
    """dataset -> absolute root of every dataset whose root variable is set (the others are named
    once in the log); a root that is not a folder is an error."""
    roots, skipped, problems = {}, [], []
    for dataset, variable in datasets.items():
        root = dataset_root(variable)
        if root is None:
            skipped.append(f"{dataset} ({variable})")
        elif not root.is_dir():
            problems.append(f"{variable}={os.environ[variable]} is not a directory ({root})")
        else:
            roots[dataset] = root
    if problems:
        raise ProtocolError("; ".join(problems))
    if skipped and roots:
        logger.info("Not evaluated (root variable unset): %s", ", ".join(skipped))
    return roots


def checkpoints_for(protocols: Sequence[Protocol], datasets: Sequence[str]) -> Dict[Tuple[str, str], Optional[Path]]:
    """(method, dataset) -> the checkpoint evaluating it (None for a training-free method), for every
    dataset of ``datasets`` each protocol lists; every missing checkpoint is named in one error
    before anything runs."""
    found: Dict[Tuple[str, str], Optional[Path]] = {}
    problems: List[str] = []
    for protocol in protocols:
        for dataset in datasets:
            if dataset not in protocol.datasets:
                continue
            try:
                found[(protocol.method, dataset)] = (None if protocol.training_free
                                                     else checkpoint_for(protocol, protocol.run_for(dataset)))
            except ProtocolError as error:
                problems.append(str(error))
    if problems:
        raise ProtocolError("; ".join(dict.fromkeys(problems)))
    return found


def run_testing(protocol: Protocol, extra: Sequence[str], roots: Dict[str, Path], results: Path,
                checkpoints: Dict[Tuple[str, str], Optional[Path]]) -> List[str]:
    """Evaluate ``protocol.method`` on every dataset of ``roots`` it lists, with the checkpoints of
    :func:`checkpoints_for` (a training-free method without one); return the result folders."""
    done = []
    folder = results / protocol.results_name
    for dataset, root in roots.items():
        if dataset not in protocol.datasets:
            continue
        save = folder / dataset
        argv = test_argv(protocol, dataset, root, save, checkpoints[(protocol.method, dataset)], extra)
        logger.info("Evaluating %s on %s: test.py %s", protocol.method, dataset, shlex.join(argv))
        test_main(argv)
        done.append(str(save))
    return done


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    return path


def test_methods(protocols: List[Protocol], extra: Sequence[str], reference: Optional[str] = None,
                 per_class: bool = False) -> str:
    """Evaluate every method on every dataset whose root is set, write each method's run table and
    the combined table (markdown and CSV) under ``RESULTS_DIR``; return the combined table's text."""
    datasets = {dataset: variable for protocol in protocols for dataset, variable in protocol.datasets.items()}
    roots = evaluated_roots(datasets)
    if not roots:
        raise ProtocolError(f"no dataset root set; nothing evaluated (set one or more of "
                            f"{', '.join(dict.fromkeys(datasets.values()))})")
    checkpoints = checkpoints_for(protocols, list(roots))
    results = output_dir("RESULTS_DIR", EvaluationSettings().save_path)
    folders: List[str] = []
    for protocol in protocols:
        done = run_testing(protocol, method_extra("test", protocol.method, extra), roots, results, checkpoints)
        if done:
            runs = load_runs(done)
            text = comparison_text(runs, published_tables(None, [protocol.method]), reference)
            _write(results / protocol.results_name / RUN_SUMMARY_FILE, "\n".join(caveat_lines(runs) + [text]))
        folders += done
    runs = load_runs(folders)
    tables = published_tables(None, [protocol.method for protocol in protocols])
    text, cells = methods_text(runs, tables, reference, per_class)
    text = "\n".join(caveat_lines(runs) + [text])
    table = _write(results / TABLE_FILE, text)
    csv_file = write_cells_csv(cells, results / CELLS_FILE)
    logger.info("Results: %s", ", ".join(folders))
    logger.info("Per-method tables (ours | published | delta): %s",
                ", ".join(str(results / p.results_name / RUN_SUMMARY_FILE) for p in protocols
                          if (results / p.results_name / RUN_SUMMARY_FILE).is_file()))
    logger.info("Comparison table: %s; its cells as CSV: %s", table, csv_file)
    return text


def method_extra(stage: str, method: str, extra: Sequence[str]) -> List[str]:
    """``extra`` (every method's flags) followed by ``$TRAIN_ARGS_<METHOD>`` / ``$TEST_ARGS_<METHOD>``:
    flags for one method only (e.g. ``TRAIN_ARGS_AACLIP="--text_epoch 1"``)."""
    variable = f"{stage.upper()}_ARGS_{method.upper()}"
    return [*extra, *shlex.split(os.environ.get(variable, ""))]


def check_flags(stage: str, protocols: Sequence[Protocol], extra: Sequence[str]) -> None:
    """Parse each method's flags (``extra`` and its own ``<STAGE>_ARGS_<METHOD>``) with its
    protocol file before anything runs, so a flag one method lacks is reported before the others
    have trained or been evaluated."""
    from .common import check_method_flags
    from .test import build_test_parser
    from .train import build_train_parser

    options_logger = logging.getLogger(CommandParser.__module__)  # the runs themselves log what presets replace
    level = options_logger.level
    options_logger.setLevel(logging.WARNING)
    try:
        for protocol in protocols:
            if stage == "train" and protocol.training_free:
                continue
            flags = method_extra(stage, protocol.method, extra)
            if stage == "train":
                argv = train_argv(protocol, next(iter(protocol.runs.values())), Path("."), Path("."), flags)
                command = build_train_parser(protocol.method)
            else:
                argv = test_argv(protocol, next(iter(protocol.datasets)), Path("."), Path("."), None, flags)
                command = build_test_parser()
            args = command.parse(argv)
            check_method_flags(args, find_method(protocol.method), training=stage == "train")
    finally:
        options_logger.setLevel(level)


def requested_methods(args) -> Tuple[str, ...]:
    """``--methods`` (env METHODS; each method once) when given, else ``--method`` (env METHOD)."""
    return tuple(dict.fromkeys(args.methods)) if args.methods else (args.method,)


def build_protocol_parser() -> CommandParser:
    """The parser of ``protocol`` (:class:`~anomaly_clip.cli.settings.ProtocolSettings`)."""
    command = CommandParser("anomaly-clip protocol", __doc__.split("\n\n")[0], "protocol")
    command.add_argument("stage", choices=["train", "test"], help="train every run, or test and compare")
    command.add_flags(dataclass_flags(ProtocolSettings, "protocol"), "protocol")
    return command


def protocol_main(argv: Optional[Sequence[str]] = None) -> object:
    """Run the ``train`` or ``test`` stage of a protocol for one or several methods."""
    args = build_protocol_parser().parse(list(argv or []))
    setup_logging()
    protocols = [load_protocol(args.protocol, method, args.shot) for method in requested_methods(args)]
    extra = shlex.split(args.extra)
    check_flags(args.stage, protocols, extra)
    if args.stage == "train":
        written = [path for protocol in protocols
                   for path in run_training(protocol, method_extra("train", protocol.method, extra))]
        if written:
            logger.info("All checkpoints under %s", _checkpoint_dir())
        return written
    text = test_methods(protocols, extra, args.published_reference, args.per_class)
    sys.stdout.write(text + "\n")
    return text
