"""Published result tables (``configs/published/<method>.yaml``) and side-by-side comparisons.

A table file holds, per method, named references (the paper's table, an official log, ...) with
per-dataset metrics in percent (``results``), optionally per-class metrics (``per_class``, from a
paper's per-class tables) and the paper's average over datasets (``average``), whether the numbers
were checked against their primary source, the AUPRO definition they use, and which paper tables
and column they were copied from (``from_tables``). :func:`compare_run` lines one of our ``results.json`` up against
one reference: ours | published | delta for every metric we computed, with notes where the
comparison means little (random weights, another AUPRO definition, an unverified reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

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


@dataclass(frozen=True)
class ComparisonRow:
    run: str
    dataset: str
    metric: str
    ours: Optional[float]
    published: Optional[float]
    note: str = ""

    @property
    def delta(self) -> Optional[float]:
        if self.ours is None or self.published is None:
            return None
        return self.ours - self.published


def run_metrics(results: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """Our mean metrics of a ``results.json`` in percent, keyed by metric name (None = N/A)."""
    mean = results.get("mean", {})
    values: Dict[str, Optional[float]] = {}
    for metric, label in METRIC_LABELS.items():
        for key, value in mean.items():
            if key == label or key.startswith(label + " ("):
                values[metric] = None if value is None else 100.0 * float(value)
    return values


def is_random_run(results: Mapping[str, Any]) -> bool:
    backbone = results.get("settings", {}).get("backbone_config", {}) or {}
    return bool(backbone.get("random_init"))


def compare_run(run: str, dataset: str, results: Mapping[str, Any],
                reference: Optional[Reference]) -> List[ComparisonRow]:
    """One row per metric of the run: ours, the reference's value for ``dataset`` and notes."""
    ours = run_metrics(results)
    our_aupro = (results.get("aupro") or {}).get("definition")
    general = []
    if is_random_run(results):
        general.append("random weights: meaningless")
    if reference is not None and not reference.verified:
        general.append("reference unverified")
    rows = []
    for metric, value in ours.items():
        published = reference.value(dataset, metric) if reference is not None else None
        notes = list(general)
        if metric == "pixel_aupro" and published is not None and reference.aupro and our_aupro \
                and reference.aupro != our_aupro:
            notes.append(f"AUPRO definitions differ (ours {our_aupro}, published {reference.aupro})")
        rows.append(ComparisonRow(run, dataset, metric, value, published, "; ".join(notes)))
    return rows
