"""How the command line ends on failure: problems the user can fix (missing weights, files or
data, bad settings, a full disk) end in one ``error: ...`` line on stderr and exit status 2,
Ctrl-C in ``interrupted`` and 130. ``--debug`` or ``ANOMALY_CLIP_DEBUG=1`` re-raises instead, for
the full traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ANOMALY_CLIP_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# how the command line spells each way of providing CLIP weights (advice of a WeightsError)
CLI_OPTIONS = {"weights_path": "--weights FILE", "cache_dir": "--cache-dir DIR", "download": "--download",
               "model_name": "--model NAME", "tiny": "--tiny"}
# what the library raises for bad input: missing/unreadable files, bad values, a loss gone non-finite
USER_ERRORS = (OSError, ValueError, FloatingPointError)


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


def error_message(error: BaseException) -> str:
    """The error's message in command-line terms; a DataLoader worker's error keeps only the
    worker's own message, not the traceback PyTorch folds into it."""
    from ..clip.weights import WeightsError  # here: `anomaly-clip --help` stays free of torch

    if isinstance(error, WeightsError):
        return error.describe(CLI_OPTIONS)
    message = str(error) or type(error).__name__
    if "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return message


def run_guarded(entry: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> Any:
    """Call ``entry(argv)`` (``--debug`` removed) as a program does: see the module docstring."""
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if debug:
        return entry(argv)
    try:
        return entry(argv)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as error:
        sys.stderr.write(f"error: {error_message(error)}\n")
        raise SystemExit(EXIT_USER_ERROR) from None
