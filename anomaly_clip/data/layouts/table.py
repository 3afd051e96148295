"""A table lists the images, their label and split: :class:`CsvTable` (VisA, HeadCT)."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

from ..records import ANOMALOUS, NORMAL, Metadata, Sample
from .base import Layout, LayoutError, listing, raise_missing_masks


def _row_values(row: Mapping[Optional[str], Optional[str]]) -> Dict[str, str]:
    """Cells of one table row with surrounding spaces removed (headers such as ``" hemorrhage"``)."""
    return {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}


@dataclass(frozen=True)
class CsvTable(Layout):
    """A table (first existing of ``tables``) lists images with their label and, optionally,
    class, split and mask. Paths come from a column or from templates filled with the row."""

    tables: Tuple[str, ...] = ()
    label_column: str = "label"
    anomalous_values: Tuple[str, ...] = ("anomaly",)
    image_column: Optional[str] = None
    image_templates: Tuple[str, ...] = ()
    class_column: Optional[str] = None
    class_name: Optional[str] = None
    split_column: Optional[str] = None
    split: str = "test"
    mask_column: Optional[str] = None

    @property
    def has_masks(self) -> bool:
        return self.mask_column is not None

    def describe(self) -> str:
        columns = [c for c in (self.class_column, self.split_column, self.label_column,
                               self.image_column, self.mask_column) if c]
        paths = f"images at {' or '.join(self.image_templates)}" if self.image_templates else "image paths in the table"
        return f"table {' or '.join(self.tables)} with columns {columns}; {paths}"

    def _table(self, root: Path) -> Optional[Path]:
        return next((root / t for t in self.tables if (root / t).is_file()), None)

    def matches(self, root: Path) -> bool:
        return self._table(root) is not None

    def _image_path(self, root: Path, values: Mapping[str, str]) -> str:
        if self.image_column is not None:
            return str(values[self.image_column])
        numbers = {key: int(value) if value.isdigit() else value for key, value in values.items()}
        candidates = [template.format(**numbers) for template in self.image_templates]
        return next((c for c in candidates if (root / c).is_file()), candidates[0])

    def scan(self, root: Path) -> Metadata:
        table = self._table(root)
        if table is None:
            raise LayoutError(f"no table found in {root}: looked for {list(self.tables)}")
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = [_row_values(row) for row in csv.DictReader(handle)]
        needed = [c for c in (self.label_column, self.image_column, self.class_column, self.split_column,
                              self.mask_column) if c]
        absent = [c for c in needed if rows and c not in rows[0]]
        if absent:
            raise LayoutError(f"{table} lacks column(s) {absent}; it has {sorted(rows[0])}")
        anomalous = {str(v).lower() for v in self.anomalous_values}
        metadata: Metadata = {}
        missing_files: List[str] = []
        missing_masks: List[str] = []
        for values in rows:
            label = ANOMALOUS if str(values[self.label_column]).lower() in anomalous else NORMAL
            image = self._image_path(root, values)
            mask = str(values[self.mask_column]) if self.mask_column and label == ANOMALOUS else ""
            if not (root / image).is_file():
                missing_files.append(image)
            if label == ANOMALOUS and self.mask_column:
                if not mask:
                    missing_masks.append(image)
                elif not (root / mask).is_file():
                    missing_files.append(mask)
            split = str(values[self.split_column]) if self.split_column else self.split
            class_name = str(values[self.class_column]) if self.class_column else self.class_name
            metadata.setdefault(split, []).append(Sample(image, label, class_name or "object", mask or None))
        if missing_files:
            raise LayoutError(f"{table} lists {len(missing_files)} file(s) missing under {root}: "
                              f"{listing(missing_files)}")
        raise_missing_masks(missing_masks, f"{table} gives no mask for them.")
        return metadata
