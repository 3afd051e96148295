"""Published result tables (``configs/published/<method>.yaml``) and side-by-side comparisons.

A table file holds, per method, named references (the paper's table, an official log, ...) with
per-dataset metrics in percent (``results``), optionally per-class metrics (``per_class``, from a
paper's per-class tables) and the paper's average over datasets (``average``), whether the numbers
were checked against their primary source, the AUPRO definition they use, and which paper tables
and column they were copied from (``from_tables``).

:func:`compare_run` lines one of our ``results.json`` up against one reference: ours | published |
delta for every metric we computed, with notes where the comparison means little (random weights,
data that is not the named dataset, another AUPRO definition, an unverified reference).
:func:`method_cells` gives the cells of the papers' layout (rows = datasets, optionally classes;
columns = methods; each cell ours and published).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from ..data.registry import published_classes_problem
from .report import IMAGE_METRICS, PIXEL_METRICS

METRIC_LABELS: Dict[str, str] = dict(IMAGE_METRICS + PIXEL_METRICS)


@dataclass(frozen=True)
class Reference:
    """One published table: ``results[dataset][metric]``, ``per_class[dataset][class][metric]`` and
    ``average[metric]`` in percent; ``from_tables`` lists the paper tables it was copied from
    (``{paper, setting, column, tables}``); ``source`` is the file it was read from."""

    method: str
    name: str
    title: str
    verified: bool
    aupro: Optional[str]
    results: Dict[str, Dict[str, float]]
    source: str = ""
    per_class: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    average: Dict[str, float] = field(default_factory=dict)
    from_tables: List[Dict[str, Any]] = field(default_factory=list)

    def value(self, dataset: str, metric: str) -> Optional[float]:
        return self.results.get(dataset, {}).get(metric)

    def class_value(self, dataset: str, class_name: str, metric: str) -> Optional[float]:
        """A per-class cell (None where the reference has none)."""
        return self.per_class.get(dataset, {}).get(class_name, {}).get(metric)


@dataclass(frozen=True)
class PublishedTables:
    method: str
    default_reference: str
    references: Dict[str, Reference] = field(default_factory=dict)

    def reference(self, name: Optional[str] = None) -> Reference:
        name = name or self.default_reference
        if name not in self.references:
            raise KeyError(f"no published reference {name!r} for {self.method}; available: {sorted(self.references)}")
        return self.references[name]


def read_published(path: str | Path) -> PublishedTables:
    """Parse and check one published-table file."""
    path = Path(path)
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or "references" not in content or "method" not in content:
        raise ValueError(f"{path} is not a published-table file (needs 'method' and 'references')")
    method = content["method"]
    references = {}
    for name, entry in content["references"].items():
        results = {str(dataset): dict(values) for dataset, values in (entry.get("results") or {}).items()}
        per_class = {str(dataset): {str(cls): dict(values) for cls, values in classes.items()}
                     for dataset, classes in (entry.get("per_class") or {}).items()}
        average = dict(entry.get("average") or {})
        cells = [values for values in results.values()] + [average] + \
            [values for classes in per_class.values() for values in classes.values()]
        unknown = sorted({metric for values in cells for metric in values} - set(METRIC_LABELS))
        if unknown:
            raise ValueError(f"{path}: reference {name!r} has unknown metrics {unknown}; use {sorted(METRIC_LABELS)}")
        references[name] = Reference(method=method, name=name, title=entry.get("title", name),
                                     verified=bool(entry.get("verified", False)), aupro=entry.get("aupro"),
                                     results=results, source=str(path), per_class=per_class, average=average,
                                     from_tables=list(entry.get("from_tables") or []))
    default = content.get("default_reference") or next(iter(references))
    return PublishedTables(method=method, default_reference=default, references=references)


RANDOM_NOTE = "random weights: meaningless"
PAPER_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")
"""The columns of the papers' tables (AnomalyCLIP: image AUROC / AP, pixel AUROC / AUPRO; AA-CLIP:
the AUROCs); other metrics enter the method table only where a published value exists."""
MEAN_ROW = "mean"


@dataclass(frozen=True)
class ComparisonRow:
    """One metric of one run beside its published value; ``comparable`` False (the data is not the
    named dataset, see :func:`comparison_problem`) leaves the delta out."""

    run: str
    dataset: str
    metric: str
    ours: Optional[float]
    published: Optional[float]
    note: str = ""
    comparable: bool = True

    @property
    def delta(self) -> Optional[float]:
        if self.ours is None or self.published is None or not self.comparable:
            return None
        return self.ours - self.published


def _metric_values(values: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Percent values keyed by metric name from a mapping keyed by metric label ("pixel AUPRO
    (compat)" counts as "pixel AUPRO"); None = not applicable."""
    found: Dict[str, Optional[float]] = {}
    for metric, label in METRIC_LABELS.items():
        for key, value in values.items():
            if key == label or key.startswith(label + " ("):
                found[metric] = None if value is None else 100.0 * float(value)
    return found


def run_metrics(results: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Our mean metrics of a ``results.json`` in percent, keyed by metric name (None = N/A)."""
    return _metric_values(results.get("mean", {}))


def class_metrics(results: Mapping[str, Any]) -> Dict[str, Dict[str, Optional[float]]]:
    """Our per-class metrics of a ``results.json`` in percent: class -> metric -> value (None = N/A)."""
    return {str(row["class"]): _metric_values(row) for row in results.get("classes", [])}


def is_random_run(results: Mapping[str, Any]) -> bool:
    backbone = results.get("settings", {}).get("backbone_config", {}) or {}
    return bool(backbone.get("random_init"))


def few_shot_problem(results: Mapping[str, Any]) -> Optional[str]:
    """A run fused with normal references (WinCLIP+, APRIL-GAN's few-shot memory) is k-shot, while
    every published column compared here is zero-shot (the papers print no WinCLIP+ column)."""
    references = (results.get("settings", {}) or {}).get("references")
    if not references:
        return None
    counts = sorted(set((references.get("images_per_class") or {}).values()))
    shots = str(counts[0]) if len(counts) == 1 else "/".join(map(str, counts)) if counts else "some"
    return f"few-shot ({shots} normal references per class) against zero-shot published numbers: not comparable"


def comparison_problem(dataset: str, results: Mapping[str, Any]) -> Optional[str]:
    """Why a run evaluated as ``dataset`` cannot be compared with that dataset's published numbers:
    its classes are not the dataset's (another dataset behind the root, or a subset;
    :func:`anomaly_clip.data.registry.published_classes_problem`), or it used normal references
    (:func:`few_shot_problem`); None when it can."""
    problems = [problem for problem in (published_classes_problem(dataset, list(class_metrics(results))),
                                        few_shot_problem(results)) if problem]
    return "; ".join(problems) or None


def _run_notes(results: Mapping[str, Any], reference: Optional[Reference], problem: Optional[str]) -> List[str]:
    notes = [RANDOM_NOTE] if is_random_run(results) else []
    if problem:
        notes.append(problem)
    if reference is not None and not reference.verified:
        notes.append("reference unverified")
    return notes


def _aupro_note(metric: str, published: Optional[float], reference: Optional[Reference],
                results: Mapping[str, Any]) -> List[str]:
    ours = (results.get("aupro") or {}).get("definition")
    if metric == "pixel_aupro" and published is not None and reference.aupro and ours and reference.aupro != ours:
        return [f"AUPRO definitions differ (ours {ours}, published {reference.aupro})"]
    return []


def compare_run(run: str, dataset: str, results: Mapping[str, Any],
                reference: Optional[Reference]) -> List[ComparisonRow]:
    """One row per metric of the run: ours, the reference's value for ``dataset`` and notes
    (random weights, data that is not ``dataset``, unverified reference, other AUPRO definitions)."""
    problem = comparison_problem(dataset, results)
    general = _run_notes(results, reference, problem)
    rows = []
    for metric, value in run_metrics(results).items():
        published = reference.value(dataset, metric) if reference is not None else None
        notes = general + _aupro_note(metric, published, reference, results)
        rows.append(ComparisonRow(run, dataset, metric, value, published, "; ".join(notes), problem is None))
    return rows


@dataclass(frozen=True)
class TableCell:
    """One cell of the papers' layout: ``method`` on ``dataset`` (``class_name`` ``"mean"`` for the
    dataset's mean row), ``metric`` in percent. ``evaluated``: ours was computed (``ours`` None then
    means not applicable); ``published`` None: the reference has no value (the paper prints none)."""

    dataset: str
    class_name: str
    metric: str
    method: str
    ours: Optional[float]
    published: Optional[float]
    evaluated: bool
    reference: str = ""
    notes: Tuple[str, ...] = ()
    comparable: bool = True

    @property
    def delta(self) -> Optional[float]:
        if not self.evaluated or self.ours is None or self.published is None or not self.comparable:
            return None
        return self.ours - self.published


def method_cells(method: str, dataset: str, results: Optional[Mapping[str, Any]], reference: Optional[Reference],
                 per_class: bool = False) -> List[TableCell]:
    """The cells of one method on one dataset: the mean row (and with ``per_class`` one row per
    class of the run and of the reference) for every metric the run computed or the reference
    publishes. ``results`` None: the method was not evaluated there (published values only)."""
    results = results or {}
    problem = comparison_problem(dataset, results) if results else None
    general = tuple(_run_notes(results, reference, problem)) if results else ()
    ours_by_class = {MEAN_ROW: run_metrics(results)} if results else {}
    published_by_class: Dict[str, Dict[str, float]] = {}
    if reference is not None:
        published_by_class[MEAN_ROW] = dict(reference.results.get(dataset, {}))
    if per_class:
        if results:
            ours_by_class.update(class_metrics(results))
        if reference is not None:
            published_by_class.update({name: dict(values)
                                       for name, values in reference.per_class.get(dataset, {}).items()})
    cells = []
    for name in dict.fromkeys([MEAN_ROW, *ours_by_class, *published_by_class]):
        ours, published = ours_by_class.get(name, {}), published_by_class.get(name, {})
        for metric in METRIC_LABELS:
            if metric not in ours and metric not in published:
                continue
            value = published.get(metric)
            notes = general + tuple(_aupro_note(metric, value, reference, results))
            cells.append(TableCell(dataset, name, metric, method, ours.get(metric), value, metric in ours,
                                   reference.name if reference is not None else "", notes, problem is None))
    return cells


@dataclass(frozen=True)
class MethodRun:
    """One method on one dataset for :func:`comparison_cells`: its ``results.json`` content (None
    when it was not evaluated there) and its published reference (None without one)."""

    method: str
    dataset: str
    results: Optional[Mapping[str, Any]]
    reference: Optional[Reference]


def comparison_cells(runs: Sequence[MethodRun], per_class: bool = False) -> List[TableCell]:
    """The cells of the papers' layout: every method on every dataset (published values only where
    a method was not evaluated), restricted to the rows the papers print: a metric of
    :data:`PAPER_METRICS` some method computed, or any metric some method has a published value
    for. Two runs of one method on one dataset raise ``ValueError`` (a cell holds one)."""
    seen = set()
    for run in runs:
        if (run.method, run.dataset) in seen:
            raise ValueError(f"two runs of {run.method} on {run.dataset}: the methods layout holds one per method "
                             "and dataset")
        seen.add((run.method, run.dataset))
    cells = [cell for run in runs
             for cell in method_cells(run.method, run.dataset, run.results, run.reference, per_class)]
    shown = {(c.dataset, c.class_name, c.metric) for c in cells
             if c.published is not None or (c.metric in PAPER_METRICS and c.evaluated)}
    return [cell for cell in cells if (cell.dataset, cell.class_name, cell.metric) in shown]
