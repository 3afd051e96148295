"""Per-class metric tables: printed like the papers (percent, one decimal), saved as CSV and JSON."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tabulate import tabulate

from ..files import atomic_paths
from .pro import AUPRO_DEFINITIONS
from .ranking import is_applicable

NOT_APPLICABLE_TEXT = "N/A"

IMAGE_METRICS: Tuple[Tuple[str, str], ...] = (
    ("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("image_f1_max", "image F1-max"))
PIXEL_METRICS: Tuple[Tuple[str, str], ...] = (
    ("pixel_auroc", "pixel AUROC"), ("pixel_ap", "pixel AP"), ("pixel_f1_max", "pixel F1-max"),
    ("pixel_aupro", "pixel AUPRO"))
LEVELS = {"image-level": IMAGE_METRICS, "pixel-level": PIXEL_METRICS,
          "image-pixel-level": IMAGE_METRICS + PIXEL_METRICS}


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class as fractions in [0, 1]; NaN = not applicable, None = not computed."""

    name: str
    num_images: int
    num_anomalous_images: int
    image_auroc: Optional[float] = None
    image_ap: Optional[float] = None
    image_f1_max: Optional[float] = None
    pixel_auroc: Optional[float] = None
    pixel_ap: Optional[float] = None
    pixel_f1_max: Optional[float] = None
    pixel_aupro: Optional[float] = None


@dataclass
class MetricsReport:
    """Per-class rows plus their mean (over the classes where a metric applies).

    ``caveat``, when set, is a warning that holds for every number (e.g. an untrained backbone):
    it heads the markdown table and fills a ``warning`` column of the CSV and a key of the JSON,
    so no copy of the numbers travels without it.
    """

    rows: List[ClassMetrics]
    metrics: str = "image-pixel-level"
    aupro_definition: str = "compat"
    fpr_limit: float = 0.3
    num_thresholds: int = 200
    settings: Dict[str, Any] = field(default_factory=dict)
    caveat: Optional[str] = None

    def __post_init__(self) -> None:
        if self.metrics not in LEVELS:
            raise ValueError(f"metrics must be one of {sorted(LEVELS)}, got {self.metrics!r}")

    @property
    def columns(self) -> List[Tuple[str, str]]:
        """``(field, label)`` of each metric column; the AUPRO label names its definition."""
        return [(name, f"{label} ({self.aupro_definition})" if name == "pixel_aupro" else label)
                for name, label in LEVELS[self.metrics]]

    @property
    def has_pixel_metrics(self) -> bool:
        return self.metrics != "image-level"

    def mean(self) -> Dict[str, Optional[float]]:
        """Mean over classes of each metric, skipping classes where it is not applicable (None if none)."""
        means = {}
        for name, label in self.columns:
            values = [v for v in (getattr(row, name) for row in self.rows) if is_applicable(v)]
            means[label] = sum(values) / len(values) if values else None
        return means

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready content: fractions in [0, 1], ``None`` where not applicable."""
        classes = []
        for row in self.rows:
            entry: Dict[str, Any] = {"class": row.name, "images": row.num_images,
                                     "anomalous_images": row.num_anomalous_images}
            entry.update({label: _or_none(getattr(row, name)) for name, label in self.columns})
            classes.append(entry)
        content: Dict[str, Any] = {"warning": self.caveat} if self.caveat else {}
        content["metrics"] = self.metrics
        if self.has_pixel_metrics:
            content["aupro"] = {"definition": self.aupro_definition, "fpr_limit": self.fpr_limit,
                                "description": self.aupro_description()}
            if self.aupro_definition == "compat":
                content["aupro"]["num_thresholds"] = self.num_thresholds
        content.update(settings=self.settings, classes=classes, mean=self.mean())
        return content

    def aupro_description(self) -> str:
        definition = AUPRO_DEFINITIONS.get(self.aupro_definition)
        description = definition.description if definition else self.aupro_definition
        if self.aupro_definition == "compat":
            description += f"; {self.num_thresholds} thresholds"
        return f"{description}; FPR limit {self.fpr_limit:g}"

    def to_markdown(self) -> str:
        """Pipe table in percent with one decimal, like the papers, under a line naming the AUPRO definition."""
        headers = ["class"] + [label for _, label in self.columns]
        body = [[row.name] + [_percent(getattr(row, name)) for name, _ in self.columns] for row in self.rows]
        body.append(["mean"] + [_percent(value) for value in self.mean().values()])
        table = tabulate(body, headers=headers, tablefmt="pipe", disable_numparse=True,
                         colalign=["left"] + ["right"] * len(self.columns))
        lines = [f"WARNING: {self.caveat}"] if self.caveat else []
        if self.has_pixel_metrics:
            lines.append(f"AUPRO: {self.aupro_definition} ({self.aupro_description()})")
        lines.append(f"Values in %; {NOT_APPLICABLE_TEXT} = not applicable (one label only), skipped by the mean.")
        return "\n".join(lines + ["", table])

    def save(self, directory: str | Path, settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Path]:
        """Write ``results.csv``, ``results.md`` and last ``results.json`` (settings, rows, mean) to
        ``directory``. Each file is replaced whole or not at all, and only once all three are
        written: a failed save leaves earlier files as they were. The renames follow one another,
        ``results.json`` last, so a process killed between them leaves the previous complete
        ``results.json`` beside a newer table."""
        if settings is not None:
            self.settings = dict(settings)
        directory = Path(directory)
        paths = {"csv": directory / "results.csv", "markdown": directory / "results.md",
                 "json": directory / "results.json"}
        with atomic_paths(paths.values()) as temporary:
            temporary[paths["json"]].write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
            self._write_csv(temporary[paths["csv"]])
            temporary[paths["markdown"]].write_text(self.to_markdown() + "\n")
        return paths

    def _write_csv(self, path: Path) -> None:
        """Percent, as the tables (each metric header says ``(%)``), at full precision; a
        ``warning`` column carries the caveat on every row."""
        warning = [self.caveat] if self.caveat else []
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "images", "anomalous_images"] + [f"{label} (%)" for _, label in self.columns]
                            + (["warning"] if self.caveat else []))
            for row in self.rows:
                writer.writerow([row.name, row.num_images, row.num_anomalous_images]
                                + [_csv_value(getattr(row, name)) for name, _ in self.columns] + warning)
            writer.writerow(["mean", sum(r.num_images for r in self.rows),
                             sum(r.num_anomalous_images for r in self.rows)]
                            + [_csv_value(v) for v in self.mean().values()] + warning)


def _or_none(value: Optional[float]) -> Optional[float]:
    return float(value) if is_applicable(value) else None


def _percent(value: Optional[float]) -> str:
    return f"{100 * value:.1f}" if is_applicable(value) else NOT_APPLICABLE_TEXT


def _csv_value(value: Optional[float]) -> str:
    return repr(100 * float(value)) if is_applicable(value) else NOT_APPLICABLE_TEXT
