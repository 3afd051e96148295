"""configs/published/*.yaml against published_tables.tsv (every numeric cell of both papers'
result tables, one row each): every cell appears in the reference that names its table and column,
with the same value, and every value of such a reference is a cell of those tables."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from anomaly_clip.data.registry import get_dataset_info
from anomaly_clip.metrics.published import Reference, read_published

FOLDER = Path(__file__).resolve().parents[1] / "configs" / "published"
TSV = FOLDER / "published_tables.tsv"


def tsv_rows() -> List[Dict[str, str]]:
    with TSV.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def references() -> List[Reference]:
    return [reference for path in sorted(FOLDER.glob("*.yaml"))
            for reference in read_published(path).references.values()]


def sources(reference: Reference) -> Iterator[Tuple[str, str, str, str]]:
    """(paper, table, setting, column) of every table the reference was copied from."""
    for entry in reference.from_tables:
        for table in entry["tables"]:
            yield str(entry["paper"]), str(table), str(entry["setting"]), str(entry["column"])


def cell(reference: Reference, row: Dict[str, str]):
    """The reference's value for a TSV row: the average column, a dataset mean or a per-class cell."""
    if row["dataset"] == "average":
        return reference.average.get(row["metric"])
    if row["class"] == "mean":
        return reference.value(row["dataset"], row["metric"])
    return reference.class_value(row["dataset"], row["class"], row["metric"])


def test_the_table_file_holds_every_table_of_both_papers():
    rows = tsv_rows()
    assert len(rows) == 1378
    tables = {(row["paper"], row["table"]) for row in rows}
    expected = {("anomalyclip", str(t)) for t in [1, 2, 3] + list(range(15, 27))} | {("aaclip", "1"), ("aaclip", "2")}
    assert tables == expected


def test_every_published_cell_is_in_configs_with_the_same_value():
    by_source: Dict[Tuple[str, str, str, str], List[Reference]] = {}
    for reference in references():
        for source in sources(reference):
            by_source.setdefault(source, []).append(reference)
    missing, wrong = [], []
    for row in tsv_rows():
        holders = by_source.get((row["paper"], row["table"], row["setting"], row["method"]), [])
        if not holders:
            missing.append(row)
        for reference in holders:
            value = cell(reference, row)
            expected = float(row["value"]) if row["value"] else None  # "" = the paper prints "-"
            if value != expected:
                wrong.append((reference.method, reference.name, row, value))
    assert not missing, f"{len(missing)} cells have no reference, e.g. {missing[:3]}"
    assert not wrong, f"{len(wrong)} cells differ, e.g. {wrong[:3]}"


def test_every_value_of_a_table_reference_is_a_published_cell():
    index: Dict[Tuple[str, ...], set] = {}
    for row in tsv_rows():
        if row["value"]:
            key = (row["paper"], row["table"], row["setting"], row["method"])
            index.setdefault(key + (row["dataset"], row["class"], row["metric"]), set()).add(float(row["value"]))
    checked = 0
    for reference in references():
        if not reference.from_tables:
            continue
        cells = [(dataset, "mean", metric, value) for dataset, values in reference.results.items()
                 for metric, value in values.items()]
        cells += [("average", "mean", metric, value) for metric, value in reference.average.items()]
        cells += [(dataset, name, metric, value) for dataset, classes in reference.per_class.items()
                  for name, values in classes.items() for metric, value in values.items()]
        for dataset, name, metric, value in cells:
            found = set().union(*(index.get(source + (dataset, name, metric), set()) for source in sources(reference)))
            assert value in found, f"{reference.method}/{reference.name}: {dataset} {name} {metric} = {value} " \
                                   f"is not in its tables ({sorted(found)})"
            checked += 1
    assert checked > 1300


@pytest.mark.parametrize("method", ["clip", "clip_ac", "winclip", "vand", "coop", "anomalyclip", "aaclip"])
def test_each_method_has_a_verified_published_column(method):
    tables = read_published(FOLDER / f"{method}.yaml")
    default = tables.reference()
    assert default.verified and default.results
    for reference in tables.references.values():
        for dataset, classes in reference.per_class.items():
            assert get_dataset_info(dataset).name == dataset and all(classes.values())


def test_aaclip_shot_settings_are_the_paper_tables_and_tn3k_tutorial_is_its_own_reference():
    aaclip = read_published(FOLDER / "aaclip.yaml")
    assert all(aaclip.references[name].verified for name in ("shot_2", "shot_16", "shot_64", "full_shot"))
    assert aaclip.reference("shot_16").value("mvtec", "image_auroc") == 89.7
    assert aaclip.reference("full_shot").average == {"pixel_auroc": 93.4, "image_auroc": 82.5}
    anomalyclip = read_published(FOLDER / "anomalyclip.yaml")
    assert anomalyclip.reference("tn3k_tutorial_finetuned").value("tn3k", "pixel_aupro") == 54.9
    assert anomalyclip.reference("colondb_finetuned").value("tn3k", "pixel_auroc") == 79.2
    assert anomalyclip.reference("zero_shot").class_value("visa", "pcb4", "image_auroc") == 93.9
