"""``anomaly-clip summarize``: one table from several ``test.py`` result folders.

Layout ``runs`` (default): rows are labelled by run (the result folder), not only by dataset, so
two runs on one dataset stay apart; ``--compare`` lines every metric up against the published
tables under ``configs/published/``: ours | published | delta, with a note where a comparison
means little. Layout ``methods``: the papers' tables, rows = datasets (``--per_class``: and their
classes) and metrics, columns = methods, each cell ``ours (published)``; ``--csv`` writes its cells.
Runs whose data is not the dataset they were evaluated as (its classes are not the published
ones) are warned about and their deltas left out.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from tabulate import tabulate

from ..data.registry import UnknownDatasetError, get_dataset_info
from ..files import atomic_path
from ..resources import configs_dir
from .options import CommandParser, UsageError, dataclass_flags
from .settings import SummarizeSettings

if TYPE_CHECKING:
    from ..metrics.published import ComparisonRow, PublishedTables, Reference, TableCell

logger = logging.getLogger(__name__)


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
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path} is not valid JSON ({error}); re-run test.py for this folder") from error
    problem = results_problem(content)
    if problem:
        raise UsageError(f"{path} is not a results file of test.py ({problem}); re-run test.py for this folder")
    return content


def results_problem(content: Any) -> Optional[str]:
    """What keeps ``content`` from being a ``results.json`` written by ``test.py``: a mapping with a
    ``mean`` mapping of metrics, a ``settings`` mapping and, when present, a ``classes`` list of
    per-class mappings (each with its ``class``); None when it is one."""
    if not isinstance(content, dict):
        return f"a {type(content).__name__}, not a mapping"
    for key, kind in (("mean", dict), ("classes", list), ("settings", dict)):
        if key == "classes" and key not in content:
            continue
        if not isinstance(content.get(key), kind):
            found = type(content[key]).__name__ if key in content else "missing"
            return f"'{key}' is {found}, not a {kind.__name__}"
    if not all(isinstance(row, dict) and "class" in row for row in content.get("classes", [])):
        return "'classes' holds a row without its 'class'"
    return None


def _percent(value: Optional[float]) -> str:
    return "N/A" if value is None else f"{value:.1f}"


def _delta(value: Optional[float]) -> str:
    return "" if value is None else f"{value:+.1f}"


def summary_table(runs: List[Tuple[str, Dict[str, Any]]]) -> str:
    """Mean metrics of each run in percent, one row per run."""
    from ..metrics.published import METRIC_LABELS, RANDOM_NOTE, is_random_run, run_metrics

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


def published_tables(files: Optional[List[str]], methods: Sequence[str]) -> Dict[str, PublishedTables]:
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


def _reference(tables: Dict[str, PublishedTables], method: str, name: Optional[str]) -> Optional[Reference]:
    """The published reference ``name`` of ``method`` (default: its table's), None without a table."""
    if method not in tables:
        return None
    try:
        return tables[method].reference(name)
    except KeyError as error:
        raise UsageError(str(error.args[0])) from None


def _run_method(results: Dict[str, Any]) -> str:
    return str(results.get("settings", {}).get("method", ""))


def _comparison_warnings(runs: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """One warning line per run whose data cannot be compared with the named dataset's published
    numbers (logged too: the table alone is easy to misread)."""
    from ..metrics.published import comparison_problem

    warnings = []
    for label, results in runs:
        dataset = canonical_dataset(str(results.get("settings", {}).get("dataset", "")))
        problem = comparison_problem(dataset, results)
        if problem:
            warnings.append(f"WARNING: {label} was evaluated as {dataset}, but {problem}.")
            logger.warning("%s was evaluated as %s, but %s", label, dataset, problem)
    return warnings


def _reference_lines(used: Dict[str, Reference], missing: Sequence[str]) -> List[str]:
    lines = []
    for reference in used.values():
        status = "checked against its source" if reference.verified else "NOT checked against the paper"
        lines.append(f"Published ({reference.method}, {reference.name}): {reference.title}; {status} "
                     f"[{reference.source}]")
    if missing:
        lines.append(f"No published tables for {sorted(missing)}: 'published' stays empty for them.")
    return lines


def comparison_text(runs: List[Tuple[str, Dict[str, Any]]], tables: Dict[str, PublishedTables],
                    reference_name: Optional[str] = None) -> str:
    """The runs layout with ``--compare``: notes, then ours | published | delta per run and metric."""
    from ..metrics.published import compare_run

    rows: List[ComparisonRow] = []
    used: Dict[str, Reference] = {}
    for label, results in runs:
        method = _run_method(results)
        reference = _reference(tables, method, reference_name or results.get("settings", {}).get("published_reference"))
        if reference is not None:
            used[f"{method}:{reference.name}"] = reference
        dataset = canonical_dataset(str(results.get("settings", {}).get("dataset", "")))
        rows += compare_run(label, dataset, results, reference)
    missing = sorted({_run_method(results) for _, results in runs} - set(tables))
    lines = _comparison_warnings(runs) + _reference_lines(used, missing)
    lines.append("Values in %; delta = ours - published (left out where the data is not the named dataset); "
                 "N/A = not applicable (one label only).")
    return "\n".join(lines + ["", comparison_table(rows)])


def methods_cells(runs: List[Tuple[str, Dict[str, Any]]], tables: Dict[str, PublishedTables],
                  reference_name: Optional[str] = None, per_class: bool = False) -> List[TableCell]:
    """The cells of the papers' layout for ``runs`` (one per method and dataset), with the published
    values of each method on the datasets another method was evaluated on
    (:func:`~anomaly_clip.metrics.published.comparison_cells`)."""
    from ..metrics.published import MethodRun, comparison_cells

    by_key: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for label, results in runs:
        key = (canonical_dataset(str(results.get("settings", {}).get("dataset", ""))), _run_method(results))
        if key in by_key:
            raise UsageError(f"two runs of {key[1]} on {key[0]} ({label} and another): the methods layout holds one "
                             "per method and dataset; summarize them with --layout runs")
        by_key[key] = results
    datasets = list(dict.fromkeys(dataset for dataset, _ in by_key))
    methods = list(dict.fromkeys(method for _, method in by_key))
    entries = []
    for dataset in datasets:
        for method in methods:
            results = by_key.get((dataset, method))
            name = reference_name or (results or {}).get("settings", {}).get("published_reference")
            entries.append(MethodRun(method, dataset, results, _reference(tables, method, name)))
    return comparison_cells(entries, per_class)


def _cell_text(cell: Optional[TableCell]) -> str:
    if cell is None:
        return ""
    ours = _percent(cell.ours) if cell.evaluated else "—"
    return f"{ours} ({'-' if cell.published is None else _percent(cell.published)})"


def methods_table(cells: List[TableCell]) -> str:
    """Rows = dataset (and class), metric; columns = methods; each cell ``ours (published)``
    ("—" where the method was not evaluated, "-" where nothing is published), notes at the end."""
    from ..metrics.published import MEAN_ROW, METRIC_LABELS

    methods = list(dict.fromkeys(cell.method for cell in cells))
    rows: Dict[Tuple[str, str, str], Dict[str, TableCell]] = {}
    for cell in cells:
        rows.setdefault((cell.dataset, cell.class_name, cell.metric), {})[cell.method] = cell
    order = {metric: index for index, metric in enumerate(METRIC_LABELS)}
    datasets = list(dict.fromkeys(cell.dataset for cell in cells))
    keys = sorted(rows, key=lambda k: (datasets.index(k[0]), k[1] != MEAN_ROW, k[1] if k[1] != MEAN_ROW else "",
                                        order[k[2]]))
    body = []
    for dataset, class_name, metric in keys:
        row = rows[(dataset, class_name, metric)]
        notes = list(dict.fromkeys(note for cell in row.values() for note in cell.notes))
        label = dataset if class_name == MEAN_ROW else f"{dataset} / {class_name}"
        body.append([label, METRIC_LABELS[metric]] + [_cell_text(row.get(method)) for method in methods]
                    + ["; ".join(notes)])
    return tabulate(body, headers=["dataset", "metric", *methods, "note"], tablefmt="pipe", disable_numparse=True,
                    colalign=("left", "left", *("right" for _ in methods), "left"))


def methods_text(runs: List[Tuple[str, Dict[str, Any]]], tables: Dict[str, PublishedTables],
                 reference_name: Optional[str] = None, per_class: bool = False) -> Tuple[str, List[TableCell]]:
    """The methods layout (notes, then :func:`methods_table`) and its cells."""
    cells = methods_cells(runs, tables, reference_name, per_class)
    used = {f"{cell.method}:{cell.reference}": _reference(tables, cell.method, cell.reference)
            for cell in cells if cell.reference}
    missing = sorted({_run_method(results) for _, results in runs} - set(tables))
    lines = _comparison_warnings(runs) + _reference_lines(used, missing)
    lines.append("Each cell: ours (published), in %; '—' = not evaluated here, '-' = nothing published, N/A = not "
                 "applicable (one label only).")
    return "\n".join(lines + ["", methods_table(cells)]), cells


CSV_COLUMNS = ("dataset", "class", "metric", "method", "ours", "published", "delta", "reference", "comparable",
               "note")


def write_cells_csv(cells: List[TableCell], path: str | os.PathLike) -> Path:
    """The cells of the methods layout as CSV, one row per dataset, class, metric and method; values
    in percent at full precision, empty where absent, ``N/A`` where not applicable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for cell in cells:
            ours = ("N/A" if cell.ours is None else repr(cell.ours)) if cell.evaluated else ""
            writer.writerow([cell.dataset, cell.class_name, cell.metric, cell.method, ours,
                             "" if cell.published is None else repr(cell.published),
                             "" if cell.delta is None else repr(cell.delta), cell.reference, cell.comparable,
                             "; ".join(cell.notes)])
    return path


def load_runs(directories: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
    """(label, results.json content) of each ``test`` result folder (see :func:`run_labels`)."""
    return [(label, read_results(directory)) for label, directory in zip(run_labels(directories), directories)]


def caveat_lines(runs: List[Tuple[str, Dict[str, Any]]]) -> List[str]:
    """The line that heads every table holding a random-weight run."""
    from ..metrics.published import is_random_run

    if any(is_random_run(results) for _, results in runs):
        return ["Runs marked 'random weights' used an untrained backbone: their numbers are meaningless."]
    return []


def summarize_main(argv: Optional[Sequence[str]] = None) -> str:
    """Gather the mean rows of several ``test.py`` result folders into one table."""
    args = build_summarize_parser().parse(list(argv or []))
    runs = load_runs(args.result_dirs)
    lines = caveat_lines(runs)
    methods = [_run_method(results) for _, results in runs]
    if args.layout == "methods":
        text, cells = methods_text(runs, published_tables(args.published, methods), args.published_reference,
                                   args.per_class)
        if args.csv:
            write_cells_csv(cells, args.csv)
    elif args.compare:
        text = comparison_text(runs, published_tables(args.published, methods), args.published_reference)
    else:
        text = summary_table(runs)
    text = "\n".join(lines + [text])
    sys.stdout.write(text + "\n")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")
    return text
