"""``anomaly-clip protocol {train,test}``: run a published protocol from its config files.

A protocol file (``configs/zero_shot_suite.yaml``, ``configs/tn3k/protocol.yaml``) names the
datasets with the environment variable holding each root and, per method, its training runs
(config file + training set) and which run's checkpoint evaluates which dataset. ``train`` runs
every training run; ``test`` evaluates every dataset whose root is set, then prints one table of
ours | published | delta. ``train.sh`` and ``test.sh`` are thin wrappers around these commands.
"""
from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..engine.config import TrainConfig
from ..engine.registry import find_method
from ..resources import configs_dir
from .common import setup_logging
from .options import CommandParser, UsageError, dataclass_flags, read_config_file
from .settings import EvaluationSettings, ProtocolSettings
from .summarize import summarize_main
from .test import test_main
from .train import train_main

logger = logging.getLogger(__name__)

PROTOCOLS = {"zero_shot": "zero_shot_suite.yaml", "tn3k": "tn3k/protocol.yaml"}


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
    runs: Dict[str, TrainingRun]        # training set -> run
    evaluated_with: Dict[str, str]      # dataset -> training set ("default" for the rest)
    test_config: Path
    source: Path

    def run_for(self, dataset: str) -> TrainingRun:
        source = self.evaluated_with.get(dataset, self.evaluated_with.get("default"))
        if source not in self.runs:
            raise ProtocolError(f"{self.source}: no training run {source!r} to evaluate {dataset}")
        return self.runs[source]


def shot_setting(shot: int) -> str:
    return "full_shot" if shot == 0 else f"shot_{shot}"


def load_protocol(protocol: str, method: str, shot: int = 0) -> Protocol:
    """Read a protocol (a name from :data:`PROTOCOLS` or a file path) for one method."""
    folder = configs_dir()
    path = Path(protocol) if protocol not in PROTOCOLS else folder / PROTOCOLS[protocol]
    content = read_config_file(path)
    methods = content.get("methods") or {}
    canonical = find_method(method).name
    if canonical not in methods:
        raise ProtocolError(f"{path} has no protocol for method {canonical!r} (it has {sorted(methods)})")
    entry = methods[canonical]
    uses_shot = "{shot}" in str(entry)
    setting = shot_setting(shot) if uses_shot else ""

    def config_file(template: str) -> Path:
        file = folder / template.format(shot=setting)
        if not file.is_file():
            raise ProtocolError(f"{path}: config file {file} not found"
                                + (f" (shot {shot} has no configuration)" if uses_shot else ""))
        return file

    runs = {}
    for dataset, run in entry["training_runs"].items():
        name = run.get("name") or "_".join(part for part in (canonical, setting, dataset) if part)
        runs[dataset] = TrainingRun(name, dataset, run["root"], config_file(run["config"]))
    return Protocol(method=canonical, setting=setting, datasets=dict(content.get("datasets") or {}), runs=runs,
                    evaluated_with=dict(entry["evaluated_with"]), test_config=config_file(entry["test_config"]),
                    source=path)


def _root(variable: str) -> Optional[str]:
    value = os.environ.get(variable, "")
    return value or None


def _checkpoint_dir() -> Path:
    return Path(os.environ.get("CKPT_DIR") or TrainConfig().save_path)


def run_training(protocol: Protocol, extra: Sequence[str]) -> List[Path]:
    """Every training run of the protocol; all roots must be set (each missing one is named)."""
    problems = []
    for run in protocol.runs.values():
        root = _root(run.root_variable)
        if root is None:
            problems.append(f"set {run.root_variable} to the {run.dataset} dataset root (with its metadata file; "
                            "see docs/datasets.md)")
        elif not Path(root).is_dir():
            problems.append(f"{run.root_variable}={root} is not a directory")
    if problems:
        raise ProtocolError("; ".join(problems))
    written = []
    for run in protocol.runs.values():
        save = _checkpoint_dir() / run.name
        argv = ["--config", str(run.config), "--method", protocol.method, "--dataset", run.dataset,
                "--train_data_path", _root(run.root_variable), "--save_path", str(save), *extra]
        logger.info("Training run %s: train.py %s", run.name, shlex.join(argv))
        written.append(train_main(argv))
    logger.info("Checkpoints: %s", ", ".join(str(p) for p in written))
    return written


def checkpoint_for(protocol: Protocol, run: TrainingRun) -> Path:
    """``CKPT_<TRAINING SET>`` if set, else the final checkpoint written by ``protocol train``."""
    variable = f"CKPT_{run.dataset.upper().replace('-', '_')}"
    if os.environ.get(variable):
        return Path(os.environ[variable])
    folder = _checkpoint_dir() / run.name
    from ..engine.training import final_checkpoint

    found = final_checkpoint(folder, find_method(protocol.method).final_stage)
    if found is None:
        raise ProtocolError(f"no checkpoint in {folder} for the {run.dataset}-trained model: run train.sh "
                            f"(or `anomaly-clip protocol train`) first, or set {variable}")
    return found


def run_testing(protocol: Protocol, extra: Sequence[str], reference: Optional[str] = None) -> str:
    results = Path(os.environ.get("RESULTS_DIR") or EvaluationSettings().save_path) / "_".join(
        part for part in (protocol.method, protocol.setting) if part)
    done = []
    for dataset, variable in protocol.datasets.items():
        root = _root(variable)
        if root is None:
            logger.info("Skipping %s: set %s to its dataset root to evaluate it", dataset, variable)
            continue
        checkpoint = checkpoint_for(protocol, protocol.run_for(dataset))
        save = results / dataset
        argv = ["--config", str(protocol.test_config), "--method", protocol.method, "--dataset", dataset,
                "--data_path", root, "--checkpoint_path", str(checkpoint), "--save_path", str(save), *extra]
        logger.info("Evaluating %s: test.py %s", dataset, shlex.join(argv))
        test_main(argv)
        done.append(str(save))
    if not done:
        names = ", ".join(protocol.datasets.values())
        raise ProtocolError(f"no dataset root set; nothing evaluated (set one or more of {names})")
    summary = ["--compare", *done, "--output", str(results / "summary.md")]
    if reference:
        summary += ["--published_reference", reference]
    return summarize_main(summary)


def build_protocol_parser() -> CommandParser:
    """The parser of ``protocol`` (:class:`~anomaly_clip.cli.settings.ProtocolSettings`)."""
    command = CommandParser("anomaly-clip protocol", __doc__.split("\n\n")[0], "protocol")
    command.add_argument("stage", choices=["train", "test"], help="train every run, or test and compare")
    command.add_flags(dataclass_flags(ProtocolSettings, "protocol"), "protocol")
    return command


def protocol_main(argv: Optional[Sequence[str]] = None) -> object:
    """Run the ``train`` or ``test`` stage of a protocol for one method."""
    args = build_protocol_parser().parse(list(argv or []))
    setup_logging()
    protocol = load_protocol(args.protocol, args.method, args.shot)
    extra = shlex.split(args.extra)
    if args.stage == "train":
        return run_training(protocol, extra)
    return run_testing(protocol, extra, args.published_reference)
