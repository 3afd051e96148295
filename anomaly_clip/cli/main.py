"""``anomaly-clip`` (and ``python -m anomaly_clip``): one command, several sub-commands."""
from __future__ import annotations

import difflib
import sys
from importlib import import_module
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from .errors import DEBUG_ENV, DEBUG_FLAG, run_guarded

# sub-command -> (module, entry point, one-line description); modules load only when used
COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "train": ("train", "train_main", "train a method's prompts/adapters on a dataset (same flags as train.py)"),
    "test": ("test", "test_main", "evaluate a checkpoint on a dataset: per-class metrics (same flags as test.py)"),
    "predict": ("predict", "predict_main", "score your own images (files, folders, globs): predictions.csv, "
                "maps at original resolution, overlays"),
    "calibrate": ("calibrate", "calibrate_main", "image and pixel thresholds from a labelled set or normal images, "
                  "stored beside the checkpoint"),
    "export": ("export", "export_main", "write a trained model as one ONNX graph (images -> scores, maps) for "
               "ONNX Runtime; predict --backend onnxruntime runs it"),
    "demo": ("demo", "demo_main", "synthetic data -> train -> zero-shot table and heatmaps, in one command"),
    "summarize": ("summarize", "summarize_main", "one table from several test.py result folders; --compare "
                  "adds the published numbers"),
    "protocol": ("protocol", "protocol_main", "run a paper protocol from configs/ (train.sh / test.sh call it)"),
    "synthesize": ("data", "synthesize_main", "write the synthetic anomaly dataset (MVTec AD layout + meta.json)"),
    "convert": ("data", "convert_main", "convert AnomalyCLIP meta.json <-> AA-CLIP jsonl metadata"),
}


def command(name: str) -> Callable[[Optional[Sequence[str]]], object]:
    module, function, _ = COMMANDS[name]
    return getattr(import_module(f".{module}", __package__), function)


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: anomaly-clip <command> [options]", "", "Zero-shot anomaly detection with CLIP "
             "(AnomalyCLIP, AA-CLIP).", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, _, description) in COMMANDS.items()]
    lines += ["", "'anomaly-clip <command> --help' lists a command's options; every command takes --config FILE",
              "and --print_config. Errors end in one 'error: ...' line",
              f"(exit status 2); {DEBUG_FLAG} or {DEBUG_ENV}=1 shows the full traceback."]
    return "\n".join(lines) + "\n"


def run(name: str, argv: Optional[Sequence[str]] = None) -> Any:
    """Run sub-command ``name`` as a program (``train.py`` and ``test.py`` too): errors the user
    can fix end in one line, not a traceback (see :mod:`anomaly_clip.cli.errors`)."""
    return run_guarded(lambda arguments: command(name)(arguments), list(sys.argv[1:] if argv is None else argv),
                       help_command=f"anomaly-clip {name} --help")


def main(argv: Optional[Sequence[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return
    if not argv:
        sys.stderr.write(usage())
        raise SystemExit(2)
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        sys.stderr.write(f"error: unknown command {argv[0]!r}; {hint}commands: {', '.join(COMMANDS)}; see "
                         "'anomaly-clip --help'\n")
        raise SystemExit(2)
    run(argv[0], argv[1:])
