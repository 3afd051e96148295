"""``anomaly-clip synthesize`` (the synthetic anomaly dataset) and ``anomaly-clip convert``
(AnomalyCLIP meta.json <-> AA-CLIP jsonl metadata)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

from .options import CommandParser, UsageError, dataclass_flags
from .settings import ConvertSettings, SynthesizeSettings

logger = logging.getLogger(__name__)


def build_synthesize_parser() -> CommandParser:
    """The parser of ``synthesize`` (:class:`~anomaly_clip.cli.settings.SynthesizeSettings`)."""
    command = CommandParser("anomaly-clip synthesize", "Write the synthetic anomaly dataset (MVTec AD layout + "
                            "meta.json).", "synthesize")
    flags = dataclass_flags(SynthesizeSettings, "synthesize")
    flags[0].kwargs["required"] = True
    command.add_flags(flags, "synthesize")
    return command


def synthesize_main(argv: Optional[Sequence[str]] = None) -> str:
    """Generate the dataset and return its root."""
    args = build_synthesize_parser().parse(list(argv or []))
    from ..data.synthetic import generate_synthetic_dataset

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return generate_synthetic_dataset(args.root, args.classes, args.n_train, args.n_test_normal,
                                      args.n_test_anomalous, args.image_size, args.seed, args.format, args.overwrite)


def build_convert_parser() -> CommandParser:
    """The parser of ``convert`` (:class:`~anomaly_clip.cli.settings.ConvertSettings`)."""
    command = CommandParser("anomaly-clip convert", "Convert AnomalyCLIP meta.json into AA-CLIP jsonl files (one "
                            "per split) or back.", "convert")
    flags = dataclass_flags(ConvertSettings, "convert")
    command.add_argument("input", nargs="+", help=flags[0].kwargs["help"])
    flags[1].kwargs["required"] = True
    command.add_flags(flags[1:], "convert")
    return command


def convert_main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Convert the metadata and return the files written."""
    args = build_convert_parser().parse(list(argv or []))
    from ..data.formats import JSONL_SUFFIX, jsonl_to_meta_json, meta_json_to_jsonl

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    inputs = [Path(path) for path in args.input]
    splits = list(args.split) if args.split else None
    if len(inputs) == 1 and inputs[0].suffix == ".json":
        written = list(meta_json_to_jsonl(inputs[0], args.output, splits).values())
    elif all(path.suffix == JSONL_SUFFIX for path in inputs):
        if splits and len(splits) != len(inputs):
            raise UsageError("give one --split per jsonl input")
        names = splits or [path.stem for path in inputs]
        if len(set(names)) != len(names):
            raise UsageError(f"split names must differ, got {names}; name them with --split")
        written = [jsonl_to_meta_json(dict(zip(names, inputs)), args.output)]
    else:
        raise UsageError("input must be one meta.json or jsonl files")
    for path in written:
        logger.info("Wrote %s", path)
    return written
