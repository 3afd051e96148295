"""meta.json and jsonl: reading the reference files, writing, converting both ways, finding them."""
from __future__ import annotations

import json

import pytest

from anomaly_clip.cli.data import convert_main
from anomaly_clip.data.formats import (
    MetadataError,
    jsonl_to_meta_json,
    load_samples,
    meta_json_to_jsonl,
    read_jsonl,
    read_meta_json,
    write_jsonl,
    write_meta_json,
    write_metadata,
)
from anomaly_clip.data.records import Sample, count_table

METADATA = {
    "train": [Sample("bottle/train/good/000.png", 0, "bottle", None, "good")],
    "test": [
        Sample("bottle/test/good/000.png", 0, "bottle", None, "good"),
        Sample("bottle/test/crack/001.png", 1, "bottle", "bottle/ground_truth/crack/001_mask.png", "crack"),
        Sample("tile/test/glue/000.png", 1, "tile", "tile/ground_truth/glue/000_mask.png", "glue"),
        Sample("scans/yes/y1.png", 1, "brain", None, "yes"),
    ],
}


def test_meta_json_round_trip(tmp_path):
    path = write_meta_json(METADATA, tmp_path / "meta.json")
    assert read_meta_json(path) == METADATA
    content = json.loads(path.read_text())
    assert list(content["test"]) == ["bottle", "tile", "brain"]
    assert content["test"]["brain"][0] == {"img_path": "scans/yes/y1.png", "mask_path": "", "cls_name": "brain",
                                           "specie_name": "yes", "anomaly": 1}


def test_jsonl_round_trip_and_reference_shape(tmp_path):
    path = write_jsonl(METADATA["test"], tmp_path / "test.jsonl")
    assert read_jsonl(path) == METADATA["test"]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"image_path": "bottle/test/good/000.png", "label": 0, "class_name": "bottle",
                        "specie_name": "good"}
    assert lines[1]["mask_path"] == "bottle/ground_truth/crack/001_mask.png"
    assert "mask_path" not in lines[3]


def test_conversion_both_ways_is_lossless(tmp_path):
    meta = write_meta_json(METADATA, tmp_path / "meta.json")
    files = meta_json_to_jsonl(meta, tmp_path / "jsonl")
    assert {split: path.name for split, path in files.items()} == {"train": "train.jsonl", "test": "test.jsonl"}
    back = jsonl_to_meta_json(files, tmp_path / "back" / "meta.json")
    assert read_meta_json(back) == METADATA
    assert json.loads(back.read_text()) == json.loads(meta.read_text())


def test_conversion_command_line(tmp_path):
    meta = write_meta_json(METADATA, tmp_path / "meta.json")
    written = convert_main([str(meta), "--output", str(tmp_path / "out")])
    assert sorted(p.name for p in written) == ["test.jsonl", "train.jsonl"]
    rebuilt = convert_main([str(tmp_path / "out" / "test.jsonl"), "--output", str(tmp_path / "m.json")])
    assert read_meta_json(rebuilt[0]) == {"test": METADATA["test"]}
    renamed = convert_main([str(tmp_path / "out" / "test.jsonl"), "--split", "full",
                            "--output", str(tmp_path / "f.json")])
    assert list(read_meta_json(renamed[0])) == ["full"]


def test_reads_reference_files(tmp_path):
    """Official generators write capitalised DAGM splits, absolute paths, '' masks; AA-CLIP writes 1.0 labels."""
    official = {"Train": {}, "Test": {"Class1": [
        {"img_path": "Class1/Test/0001.PNG", "mask_path": "Class1/Test/Label/0001_label.PNG", "cls_name": "Class1",
         "specie_name": "", "anomaly": 1},
        {"img_path": "/data/br35/no/n1.jpg", "mask_path": "", "cls_name": "Class1", "specie_name": "", "anomaly": 0},
    ]}}
    (tmp_path / "meta.json").write_text(json.dumps(official))
    samples = load_samples(tmp_path, split="test")
    assert samples == [Sample("Class1/Test/0001.PNG", 1, "Class1", "Class1/Test/Label/0001_label.PNG"),
                       Sample("/data/br35/no/n1.jpg", 0, "Class1")]
    (tmp_path / "full-shot.jsonl").write_text(
        '{"image_path": "test/Ungood/img/1_2.png", "label": 1.0, "class_name": "Liver", '
        '"mask_path": "test/Ungood/label/1_2.png"}\n{"image_path": "test/good/img/3.png", "label": 0.0, '
        '"class_name": "Liver"}\n\n')
    shots = load_samples(tmp_path, metadata="full-shot.jsonl")
    assert shots == [Sample("test/Ungood/img/1_2.png", 1, "Liver", "test/Ungood/label/1_2.png"),
                     Sample("test/good/img/3.png", 0, "Liver")]
    assert isinstance(shots[0].label, int)


def test_load_samples_finds_split_files(tmp_path):
    write_metadata(METADATA, tmp_path, "jsonl")
    assert load_samples(tmp_path, "train") == METADATA["train"]
    assert load_samples(tmp_path, "test") == METADATA["test"]
    write_metadata({"test": METADATA["test"]}, tmp_path, "meta")
    assert load_samples(tmp_path, "train") == METADATA["train"]  # meta.json lacks it, train.jsonl has it
    assert load_samples(tmp_path / "..", "test", metadata=tmp_path / "meta.json") == METADATA["test"]


def test_clear_errors(tmp_path):
    with pytest.raises(MetadataError, match="generate_dataset_json"):
        load_samples(tmp_path)
    with pytest.raises(MetadataError, match="not a folder"):
        load_samples(tmp_path / "absent")
    write_meta_json({"train": [], "test": METADATA["test"]}, tmp_path / "meta.json")
    with pytest.raises(MetadataError, match=r"no split 'validation'.*\['test', 'train'\]"):
        load_samples(tmp_path, "validation")
    with pytest.raises(MetadataError, match="'train'.*empty.*splits with images: \\['test'\\]"):
        load_samples(tmp_path, "train")
    with pytest.raises(MetadataError, match="not found"):
        load_samples(tmp_path, metadata="other.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MetadataError, match="bad.json"):
        load_samples(tmp_path, metadata="bad.json")
    (tmp_path / "bad.jsonl").write_text('{"image_path": "a.png", "label": 1, "class_name": "x"}\n'
                                        '{"image_path": "b.png", "label": 2, "class_name": "x"}\n')
    with pytest.raises(MetadataError, match="line 2"):
        load_samples(tmp_path, metadata="bad.jsonl")
    (tmp_path / "missing_key.json").write_text(json.dumps({"test": {"x": [{"img_path": "a.png"}]}}))
    with pytest.raises(MetadataError, match="bad entry"):
        load_samples(tmp_path, metadata="missing_key.json")


def test_sample_validation():
    assert Sample("a.png", 1.0, "x", "").mask_path is None
    for label in (2, -1, 0.5, True):
        with pytest.raises(ValueError, match="label"):
            Sample("a.png", label, "x")
    with pytest.raises(ValueError, match="class_name"):
        Sample("a.png", 0, "")


def test_count_table():
    table = count_table(METADATA)
    assert {"split": "test", "class": "bottle", "normal": 1, "anomalous": 1, "masks": 1} in table
    assert {"split": "test", "class": "(all)", "normal": 1, "anomalous": 3, "masks": 2} in table
