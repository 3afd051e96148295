"""``anomaly-clip summarize``: one table from several ``test.py`` result folders.

Rows are labelled by run (the result folder), not only by dataset, so two runs on one dataset
stay apart. ``--compare`` lines every metric up against the published tables under
``configs/published/``: ours | published | delta, with a note where a comparison means little.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from ..data.registry import UnknownDatasetError, get_dataset_info
from ..resources import configs_dir
from .options import CommandParser, UsageError, dataclass_flags
from .settings import SummarizeSettings

if TYPE_CHECKING:
    from ..metrics.published import ComparisonRow, PublishedTables, Reference

RANDOM_NOTE = "random weights: meaningless"


def build_summarize_parser() -> CommandParser:
    """The parser of ``summarize`` (:class:`~anomaly_clip.cli.settings.SummarizeSettings`)."""
    command = CommandParser("anomaly-clip summarize", __doc__.split("\n\n")[0], "summarize")
    flags = dataclass_flags(SummarizeSettings, "summarize")
    command.add_argument("result_dirs", nargs="+", help=flags[0].kwargs["help"])
    command.add_flags(flags[1:], "summarize")
    return command


def run_labels(directories: Sequence[str]) -> List[str]:
    """Short unique labels naming the run: each folder relative to the parent of the folders'
    common parent (``anomalyclip/mvtec``, ``aaclip_shot_16/mvtec``)."""
    paths = [Path(d).resolve() for d in directories]
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    base = common.parent if common.parent != common else common
    return [str(p.relative_to(base)) for p in paths]


def canonical_dataset(name: str) -> str:
    try:
        return get_dataset_info(name).name
    except UnknownDatasetError:
        return name


def read_results(directory: str) -> Dict[str, Any]:
    """The ``results.json`` of a ``test`` folder; a missing or broken one is a :class:`UsageError`."""
    path = Path(directory) / "results.json"
    if not Path(directory).is_dir():
        raise UsageError(f"{directory} is not a folder: pass folders written by test.py --save_path")
    if not path.is_file():
        raise UsageError(f"{path} not found: run test.py with --save_path {directory} first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}); re-run test.py for this folder") from error


def _percent(value: Optional[float]) -> str:
    return "N/A" if value is None else f"{value:.1f}"


def _delta(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.1f}"


def summary_table(runs: List[Tuple[str, Dict[str, Any]]]) -> str:
    """Mean metrics of each run in percent, one row per run."""
    from ..metrics.published import METRIC_LABELS, is_random_run, run_metrics

    metrics = [m for m in METRIC_LABELS if any(m in run_metrics(results) for _, results in runs)]
    headers = ["run", "dataset", "method"] + [METRIC_LABELS[m] for m in metrics] + ["note"]
    body = []
    for label, results in runs:
        values = run_metrics(results)
        settings = results.get("settings", {})
        body.append([label, settings.get("dataset", ""), settings.get("method", "")]
                    + [_percent(values.get(m)) if m in values else "" for m in metrics]
                    + [RANDOM_NOTE if is_random_run(results) else ""])
    return tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True)


def comparison_table(rows: List[ComparisonRow]) -> str:
    """ours | published | delta per metric, one row per run and metric."""
    from ..metrics.published import METRIC_LABELS

    body = [[row.run, row.dataset, METRIC_LABELS[row.metric], _percent(row.ours),
             "—" if row.published is None else _percent(row.published), _delta(row.delta), row.note]
            for row in rows]
    return tabulate(body, headers=["run", "dataset", "metric", "ours", "published", "delta", "note"],
                    tablefmt="pipe", disable_numparse=True, colalign=("left", "left", "left", "right", "right",
                                                                     "right", "left"))


def _published_tables(files: Optional[List[str]], methods: Sequence[str]) -> Dict[str, PublishedTables]:
    from ..metrics.published import read_published

    tables: Dict[str, PublishedTables] = {}
    if files:
        for file in files:
            if not Path(file).is_file():
                raise UsageError(f"published-table file not found: {file}")
            table = read_published(file)
            tables[table.method] = table
        return tables
    folder = configs_dir() / "published"
    for method in sorted(set(methods)):
        path = folder / f"{method}.yaml"
        if path.is_file():
            tables[method] = read_published(path)
    return tables


def summarize_main(argv: Optional[Sequence[str]] = None) -> str:
    """Gather the mean rows of several ``test.py`` result folders into one table."""
    args = build_summarize_parser().parse(list(argv or []))
    from ..metrics.published import compare_run, is_random_run

    labels = run_labels(args.result_dirs)
    runs = [(label, read_results(directory)) for label, directory in zip(labels, args.result_dirs)]
    lines = []
    if any(is_random_run(results) for _, results in runs):
        lines.append("Runs marked 'random weights' used an untrained backbone: their numbers are meaningless.")
    if not args.compare:
        table = summary_table(runs)
    else:
        methods = [results.get("settings", {}).get("method", "") for _, results in runs]
        tables = _published_tables(args.published, methods)
        rows: List[ComparisonRow] = []
        used: Dict[str, Reference] = {}
        for label, results in runs:
            settings = results.get("settings", {})
            method = settings.get("method", "")
            reference = None
            if method in tables:
                name = args.published_reference or settings.get("published_reference")
                try:
                    reference = tables[method].reference(name)
                except KeyError as error:
                    raise UsageError(str(error.args[0])) from None
                used[f"{method}:{reference.name}"] = reference
            rows += compare_run(label, canonical_dataset(str(settings.get("dataset", ""))), results, reference)
        for reference in used.values():
            status = "checked against its source" if reference.verified else "NOT checked against the paper"
            lines.append(f"Published ({reference.method}, {reference.name}): {reference.title}; {status} "
                         f"[{reference.source}]")
        missing = sorted(set(methods) - set(tables))
        if missing:
            lines.append(f"No published tables for {missing}: 'published' stays empty for them.")
        lines.append("Values in %; delta = ours - published; N/A = not applicable (one label only).")
        table = comparison_table(rows)
    text = "\n".join(lines + ["", table]) if lines else table
    sys.stdout.write(text + "\n")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return text
