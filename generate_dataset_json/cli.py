"""Command line of the metadata generator; the layouts themselves live in
:mod:`anomaly_clip.data.registry` and :mod:`anomaly_clip.data.layouts`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Union

from tabulate import tabulate

from anomaly_clip.data.fewshot import few_shot_subset
from anomaly_clip.data.formats import META_JSON, read_meta_json, write_jsonl, write_metadata
from anomaly_clip.data.layouts import LayoutError
from anomaly_clip.data.layouts.folders import Folders
from anomaly_clip.data.records import count_table
from anomaly_clip.data.registry import get_dataset_info, list_rows, scan_dataset

logger = logging.getLogger("generate_dataset_json")


def generate(dataset: str, root: Union[str, Path], fmt: str = "meta", output: Optional[Union[str, Path]] = None,
             class_name: Optional[str] = None, normal_dir: Folders = None, anomalous_dir: Folders = None,
             mask_dir: Folders = None, split: Optional[str] = None, few_shot: int = 0, few_shot_split: str = "test",
             seed: int = 0) -> List[Path]:
    """Scan ``root`` as ``dataset`` and write its metadata; returns the files written.

    ``output`` defaults to ``root`` (``meta.json`` and/or ``<split>.jsonl`` inside it); with
    ``few_shot`` K > 0, ``<K>-shot.jsonl`` (AA-CLIP's naming) holds a seeded K-per-class subset
    of ``few_shot_split``. ``normal_dir``, ``anomalous_dir`` and ``mask_dir`` (``folders``
    layout) each take one folder or a sequence of folders.
    """
    info = get_dataset_info(dataset)
    metadata = scan_dataset(info.name, root, class_name=class_name, normal_dir=normal_dir,
                            anomalous_dir=anomalous_dir, mask_dir=mask_dir, split=split)
    logger.info("%s at %s:\n%s", info.title, root, tabulate(count_table(metadata), headers="keys"))
    if info.image_level_only:
        logger.info("%s has image-level labels only (no masks)", info.title)
    target = Path(output) if output is not None else Path(root)
    if split is not None and fmt in ("meta", "both"):
        metadata = with_other_splits(metadata, target if fmt == "meta" and target.suffix == ".json"
                                     else target / META_JSON)
    written = write_metadata(metadata, target, fmt)
    if few_shot:
        if few_shot_split not in metadata:
            raise LayoutError(f"no split {few_shot_split!r} for the few-shot subset; found {sorted(metadata)}")
        subset = few_shot_subset(metadata[few_shot_split], few_shot, seed=seed)
        folder = target.parent if target.suffix == ".json" else target
        written.append(write_jsonl(subset, folder / f"{few_shot}-shot.jsonl"))
    for path in written:
        logger.info("Wrote %s", path)
    return written


def with_other_splits(metadata, meta_path: Path):
    """``metadata`` (the splits just scanned) plus the other non-empty splits of an existing
    ``meta_path``, so that writing a second split of a folder pair (``--split test`` after
    ``--split train``) keeps the first; said in the log."""
    if not meta_path.is_file():
        return metadata
    kept = {name: samples for name, samples in read_meta_json(meta_path).items() if name not in metadata and samples}
    if kept:
        logger.info("Kept split(s) %s of the existing %s; wrote %s", sorted(kept), meta_path, sorted(metadata))
    return {**kept, **metadata}


class OneLineParser(argparse.ArgumentParser):
    """Usage problems in one line, ``error: ...; see '... --help'``, exit 2 (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message}; see '{self.prog} --help'\n")


class Once(argparse.Action):
    """A single-valued option: giving it twice with different values is an error, not "the last wins"."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: Optional[str] = None) -> None:
        seen = getattr(namespace, f"_given_{self.dest}", None)
        if seen is not None and seen != values:
            parser.error(f"{option_string} given twice ({seen!r} and {values!r}); give it once")
        setattr(namespace, f"_given_{self.dest}", values)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m generate_dataset_json",
        description="Write AnomalyCLIP meta.json / AA-CLIP jsonl metadata for a dataset in its published layout.")
    parser.add_argument("dataset", nargs="?", help="dataset name or alias (see --list)")
    parser.add_argument("--root", action=Once, help="dataset root folder")
    parser.add_argument("--format", action=Once, choices=("meta", "jsonl", "both"), default="meta",
                        help="meta.json (AnomalyCLIP), <split>.jsonl (AA-CLIP) or both (default meta)")
    parser.add_argument("--output", action=Once, default=None,
                        help="meta.json path or output folder (default: the dataset root)")
    parser.add_argument("--class-name", action=Once, default=None,
                        help="class name of a single-class dataset (also of `custom` pointed at one class folder)")
    parser.add_argument("--normal-dir", action="append", default=None,
                        help="'folders' layout: folder of normal images (repeat for several)")
    parser.add_argument("--anomalous-dir", action="append", default=None,
                        help="'folders' layout: folder of anomalous images, a defect type each (repeat for several)")
    parser.add_argument("--mask-dir", action="append", default=None,
                        help="'folders' layout: optional mask folder, one for all anomalous folders or one per "
                             "--anomalous-dir in the same order")
    parser.add_argument("--split", action=Once, default=None, help="'folders' layout: split name (default test)")
    parser.add_argument("--few-shot", action=Once, type=int, default=0, metavar="K",
                        help="also write <K>-shot.jsonl: K images per class, half normal, half anomalous")
    parser.add_argument("--few-shot-split", action=Once, default="test", help="split the few-shot subset is drawn from")
    parser.add_argument("--seed", action=Once, type=int, default=0, help="seed of the few-shot subset")
    parser.add_argument("--list", action="store_true", help="list the supported datasets and exit")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.list:
        sys.stdout.write(tabulate(list_rows(), headers="keys") + "\n")
        return []
    if not args.dataset or not args.root:
        parser.error("give a dataset name and --root (or --list)")
    try:
        return generate(args.dataset, args.root, args.format, args.output, args.class_name, args.normal_dir,
                        args.anomalous_dir, args.mask_dir, args.split, args.few_shot, args.few_shot_split, args.seed)
    except (ValueError, OSError) as error:  # unknown name, tree not in the layout, unreadable mask, unwritable output
        parser.exit(2, f"error: {error}\n")
