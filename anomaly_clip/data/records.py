"""The one sample record every metadata format, layout scanner and loader shares."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

NORMAL, ANOMALOUS = 0, 1

Metadata = Dict[str, List["Sample"]]
"""Samples per split name (``"train"``, ``"test"``, ...)."""


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    Paths are relative to the dataset root exactly as the metadata stores them (an absolute
    path also works: joining it to the root leaves it unchanged). ``mask_path`` is None for
    normal images and for anomalous images of datasets without pixel annotations.
    ``specie_name`` is the defect type (``"scratch"``) or acquisition group, "" when unknown.
    """

    image_path: str
    label: int
    class_name: str
    mask_path: Optional[str] = None
    specie_name: str = ""

    def __post_init__(self) -> None:
        if not self.image_path:
            raise ValueError("sample has an empty image_path")
        if not self.class_name:
            raise ValueError(f"sample {self.image_path!r} has an empty class_name")
        label = self.label
        if isinstance(label, bool) or label not in (0, 1):
            raise ValueError(f"label of {self.image_path!r} must be 0 (normal) or 1 (anomalous), got {label!r}")
        # Metadata written by other tools stores labels as 1.0; keep one type internally.
        object.__setattr__(self, "label", int(label))
        object.__setattr__(self, "mask_path", self.mask_path or None)
        object.__setattr__(self, "specie_name", self.specie_name or "")

    @property
    def is_anomalous(self) -> bool:
        return self.label == ANOMALOUS


def class_names(samples: Iterable[Sample]) -> List[str]:
    """Class names in order of first appearance."""
    return list(dict.fromkeys(sample.class_name for sample in samples))


def count_table(metadata: Mapping[str, List[Sample]]) -> List[Dict[str, object]]:
    """One row per (split, class): image counts by label and how many anomalous ones have masks."""
    rows: List[Dict[str, object]] = []
    for split, samples in metadata.items():
        totals: Counter = Counter()
        for name in class_names(samples):
            members = [s for s in samples if s.class_name == name]
            row = {
                "split": split,
                "class": name,
                "normal": sum(1 for s in members if not s.is_anomalous),
                "anomalous": sum(1 for s in members if s.is_anomalous),
                "masks": sum(1 for s in members if s.is_anomalous and s.mask_path),
            }
            totals.update({key: row[key] for key in ("normal", "anomalous", "masks")})
            rows.append(row)
        if len(class_names(samples)) > 1:
            rows.append({"split": split, "class": "(all)", **{k: totals[k] for k in ("normal", "anomalous", "masks")}})
    return rows
