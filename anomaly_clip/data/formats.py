"""Metadata files: AnomalyCLIP's ``meta.json`` and AA-CLIP's jsonl, read, written and converted.

``meta.json`` (AnomalyCLIP) holds every split::

    {"train": {class: [{"img_path", "mask_path", "cls_name", "specie_name", "anomaly"}, ...]},
     "test": {...}}

with ``mask_path`` "" when there is none. A jsonl file (AA-CLIP) holds one split, one image a
line: ``{"image_path", "label", "class_name", "mask_path"}`` with ``mask_path`` omitted when there
is none (``specie_name`` is added when known; AA-CLIP ignores it). Inside a dataset root the
jsonl files are named after their split: ``train.jsonl``, ``test.jsonl``. Paths are relative to
the dataset root in both formats.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

from .records import Metadata, Sample

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
META_JSON = "meta.json"
JSONL_SUFFIX = ".jsonl"


class MetadataError(ValueError):
    """A metadata file is missing, malformed, or lacks the requested split."""


def jsonl_name(split: str) -> str:
    """File name of one split's jsonl inside a dataset root."""
    return f"{split}{JSONL_SUFFIX}"


def _load_json(path: Path) -> object:
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise MetadataError(f"{path} is not valid JSON: {error}") from error


@dataclass(frozen=True)
class EntryKeys:
    """The keys of one image entry in a metadata format."""

    image: str
    label: str
    class_name: str
    mask: str
    specie: str


META_KEYS = EntryKeys("img_path", "anomaly", "cls_name", "mask_path", "specie_name")
JSONL_KEYS = EntryKeys("image_path", "label", "class_name", "mask_path", "specie_name")
_SHOWN_CHARACTERS = 200


def _shown(entry: object) -> str:
    text = repr(entry)
    return text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS] + " ..."


def sample_from_entry(entry: object, keys: EntryKeys, where: str) -> Sample:
    """The :class:`Sample` of one metadata entry, every value checked for its type.

    ``where`` names the file and the place of the entry in it. A missing key, a path or name
    that is not a non-empty string (a number where a path belongs), or a label other than the
    number 0 or 1 (``"1"`` as a string, ``2``, ``true``) raises :class:`MetadataError` naming the
    key, the entry and ``where``, so a bad file stops the run before any image is read.
    """
    if not isinstance(entry, dict):
        raise MetadataError(f"{where}: an entry must be an object with keys {keys.image!r}, {keys.label!r} and "
                            f"{keys.class_name!r}, got {_shown(entry)}")

    def fail(key: str, problem: str) -> MetadataError:
        return MetadataError(f"{where}: key {key!r} {problem} in entry {_shown(entry)}")

    for key in (keys.image, keys.label, keys.class_name):
        if key not in entry:
            raise fail(key, "is missing")
    for key, required in ((keys.image, True), (keys.class_name, True), (keys.mask, False), (keys.specie, False)):
        value = entry.get(key)
        if required and not (isinstance(value, str) and value.strip()):
            raise fail(key, f"must be a non-empty string, got {value!r} ({type(value).__name__})")
        if not required and value is not None and not isinstance(value, str):
            raise fail(key, f"must be a string (or empty), got {value!r} ({type(value).__name__})")
    label = entry[keys.label]
    if isinstance(label, bool) or not isinstance(label, (int, float)) or label not in (0, 1):
        raise fail(keys.label, f"must be the number 0 (normal) or 1 (anomalous), got {label!r} "
                               f"({type(label).__name__})")
    return Sample(entry[keys.image], int(label), entry[keys.class_name], entry.get(keys.mask) or None,
                  entry.get(keys.specie) or "")


def read_meta_json(path: PathLike) -> Metadata:
    """All splits of an AnomalyCLIP ``meta.json``; class names come from the file itself."""
    path = Path(path)
    content = _load_json(path)
    if not isinstance(content, dict):
        raise MetadataError(f"{path} must hold an object of splits, got {type(content).__name__}")
    metadata: Metadata = {}
    for split, classes in content.items():
        if not isinstance(classes, dict):
            raise MetadataError(f"split {split!r} of {path} must map class names to lists of images")
        metadata[split] = []
        for name, entries in classes.items():
            if not isinstance(entries, list):
                raise MetadataError(f"{path}, split {split!r}: class {name!r} must hold a list of image entries, "
                                    f"got {type(entries).__name__}")
            metadata[split].extend(
                sample_from_entry(entry, META_KEYS, f"{path}, split {split!r}, class {name!r}, bad entry {number}")
                for number, entry in enumerate(entries, start=1))
    return metadata


def meta_json_content(metadata: Mapping[str, Sequence[Sample]]) -> Dict[str, Dict[str, List[dict]]]:
    """The ``meta.json`` object of ``metadata`` (classes in order of first appearance)."""
    content: Dict[str, Dict[str, List[dict]]] = {}
    for split, samples in metadata.items():
        classes: Dict[str, List[dict]] = {}
        for sample in samples:
            classes.setdefault(sample.class_name, []).append({
                "img_path": sample.image_path,
                "mask_path": sample.mask_path or "",
                "cls_name": sample.class_name,
                "specie_name": sample.specie_name,
                "anomaly": sample.label,
            })
        content[split] = classes
    return content


def write_meta_json(metadata: Mapping[str, Sequence[Sample]], path: PathLike) -> Path:
    """Write ``metadata`` as an AnomalyCLIP ``meta.json``; the official loader reads it as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(meta_json_content(metadata), handle, indent=4)
        handle.write("\n")
    return path


def read_jsonl(path: PathLike) -> List[Sample]:
    """Samples of an AA-CLIP jsonl file (one split)."""
    path = Path(path)
    samples = []
    with open(path, "r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as error:
                raise MetadataError(f"{path}, line {number}: not valid JSON ({error})") from error
            samples.append(sample_from_entry(entry, JSONL_KEYS, f"{path}, line {number}"))
    return samples


def write_jsonl(samples: Iterable[Sample], path: PathLike) -> Path:
    """Write one split as AA-CLIP jsonl (``mask_path`` only where there is a mask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for sample in samples:
            entry: Dict[str, object] = {
                "image_path": sample.image_path,
                "label": sample.label,
                "class_name": sample.class_name,
            }
            if sample.mask_path:
                entry["mask_path"] = sample.mask_path
            if sample.specie_name:
                entry["specie_name"] = sample.specie_name
            handle.write(json.dumps(entry) + "\n")
    return path


def meta_json_to_jsonl(meta_path: PathLike, output_dir: PathLike,
                       splits: Optional[Sequence[str]] = None) -> Dict[str, Path]:
    """Convert a ``meta.json`` into one ``<split>.jsonl`` per (non-empty) split."""
    metadata = read_meta_json(meta_path)
    chosen = list(splits) if splits else [split for split, samples in metadata.items() if samples]
    missing = [split for split in chosen if split not in metadata]
    if missing:
        raise MetadataError(f"{meta_path} has no split {missing}; it has {sorted(metadata)}")
    return {split: write_jsonl(metadata[split], Path(output_dir) / jsonl_name(split)) for split in chosen}


def jsonl_to_meta_json(split_files: Mapping[str, PathLike], meta_path: PathLike) -> Path:
    """Combine jsonl files (split name -> file) into one ``meta.json``."""
    return write_meta_json({split: read_jsonl(path) for split, path in split_files.items()}, meta_path)


def write_metadata(metadata: Mapping[str, Sequence[Sample]], output: PathLike, fmt: str = "meta") -> List[Path]:
    """Write ``metadata`` in ``fmt``: ``meta`` (``output`` is the file, or a folder receiving
    ``meta.json``), ``jsonl`` (``output`` is a folder receiving ``<split>.jsonl`` per non-empty
    split) or ``both`` (``output`` is a folder)."""
    if fmt not in ("meta", "jsonl", "both"):
        raise ValueError(f"format must be 'meta', 'jsonl' or 'both', got {fmt!r}")
    output = Path(output)
    if fmt in ("jsonl", "both") and output.suffix in (".json", JSONL_SUFFIX):
        raise ValueError(f"jsonl output must be a folder (one <split>.jsonl per split), got {output}")
    written: List[Path] = []
    if fmt in ("meta", "both"):
        meta_path = output if fmt == "meta" and output.suffix == ".json" else output / META_JSON
        written.append(write_meta_json(metadata, meta_path))
    if fmt in ("jsonl", "both"):
        written.extend(write_jsonl(samples, output / jsonl_name(split))
                       for split, samples in metadata.items() if samples)
    return written


def _resolve_metadata_file(root: Path, metadata: PathLike) -> Path:
    candidate = Path(metadata)
    if candidate.is_file():
        return candidate
    inside = root / candidate
    if not candidate.is_absolute() and inside.is_file():
        return inside
    raise MetadataError(f"metadata file {metadata} not found (also looked for {inside})")


def _split_of(metadata: Metadata, split: str, source: Path) -> List[Sample]:
    by_lower = {name.lower(): name for name in metadata}
    key = split if split in metadata else by_lower.get(split.lower())
    if key is None:
        raise MetadataError(f"{source} has no split {split!r}; it has {sorted(metadata)}")
    samples = metadata[key]
    if not samples:
        filled = sorted(name for name, entries in metadata.items() if entries)
        raise MetadataError(f"split {split!r} of {source} is empty; splits with images: {filled}")
    return samples


def load_samples(root: PathLike, split: str = "test", metadata: Optional[PathLike] = None) -> List[Sample]:
    """Samples of ``split`` of the dataset at ``root``.

    ``metadata`` names the file explicitly (absolute, or relative to the working directory or
    to ``root``); a ``.json`` file is read as ``meta.json`` and ``split`` picked from it, a
    ``.jsonl`` file is one split by itself (AA-CLIP's ``full-shot.jsonl``, ``16-shot.jsonl``)
    and ``split`` is not used. Without it, ``root/meta.json`` is used when it has the split,
    else ``root/<split>.jsonl``.
    """
    root = Path(root)
    if metadata is not None:
        path = _resolve_metadata_file(root, metadata)
        if path.suffix == JSONL_SUFFIX:
            samples = read_jsonl(path)
            if not samples:
                raise MetadataError(f"{path} lists no images")
            logger.info("Read %d samples from %s", len(samples), path)
            return samples
        return _split_of(read_meta_json(path), split, path)
    if not root.is_dir():
        raise MetadataError(f"dataset root {root} is not a folder")
    meta_path, jsonl_path = root / META_JSON, root / jsonl_name(split)
    if meta_path.is_file():
        content = read_meta_json(meta_path)
        if split in content or split.lower() in {name.lower() for name in content} or not jsonl_path.is_file():
            return _split_of(content, split, meta_path)
    if jsonl_path.is_file():
        samples = read_jsonl(jsonl_path)
        if not samples:
            raise MetadataError(f"{jsonl_path} lists no images")
        return samples
    raise MetadataError(
        f"no metadata in {root}: looked for {META_JSON} and {jsonl_name(split)}. Create it with "
        f"`python -m generate_dataset_json <dataset> --root {root}` or pass the file explicitly."
    )
