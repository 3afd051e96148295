"""How the command line ends on failure: problems the user can fix (missing weights, files or
data, bad settings, a full disk, a torchrun process that stopped answering) end in one
``error: ...`` line on stderr and exit status 2, Ctrl-C (also while the command starts: imports,
model building) in ``interrupted`` and 130. ``--debug`` or ``ANOMALY_CLIP_DEBUG=1`` re-raises
instead, for the full traceback.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable, Sequence

from ..extras import MissingExtraError

DEBUG_FLAG = "--debug"
DEBUG_ENV = "ANOMALY_CLIP_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# how the command line spells each way of providing CLIP weights (advice of a WeightsError)
CLI_OPTIONS = {"weights_path": "--weights FILE", "cache_dir": "--cache-dir DIR", "download": "--download",
               "model_name": "--model NAME", "tiny": "--tiny"}
# what the library raises for bad input: missing/unreadable files, bad values, a loss gone non-finite,
# a package of an optional extra not installed
USER_ERRORS = (OSError, ValueError, FloatingPointError, MissingExtraError)


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "0") not in ("", "0")


# an output path of the wrong kind, as the operating system reports it (with the path it refused)
PATH_PROBLEMS = {FileExistsError: "is a file, where a folder is needed: choose another output folder",
                 NotADirectoryError: "lies under a file, not a folder: choose another output folder",
                 IsADirectoryError: "is a folder, where a file is needed: give a file name"}


def error_message(error: BaseException) -> str:
    """The error's message in command-line terms; a DataLoader worker's error keeps only the
    worker's own message, not the traceback PyTorch folds into it."""
    from ..clip.weights import WeightsError  # here: `anomaly-clip --help` stays free of torch

    if isinstance(error, WeightsError):
        return error.describe(CLI_OPTIONS)
    path_problem = PATH_PROBLEMS.get(type(error))
    if path_problem is not None and getattr(error, "filename", None):
        return f"{error.filename2 or error.filename} {path_problem}"  # filename2: the target of a rename
    message = str(error) or type(error).__name__
    if "\nOriginal Traceback" in message:
        message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(message.split())


def distributed_timeout(error: BaseException) -> bool:
    """True for the error a collective raises when another ``torchrun`` process did not answer in time."""
    if not isinstance(error, RuntimeError) or "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    text = str(error).lower()
    return dist.is_available() and dist.is_initialized() and ("timed out" in text or "timeout" in text)


def note_in_log_files(line: str) -> None:
    """Append ``line`` as an ERROR record to the log files a command has already opened (not to the
    console, which gets the line itself), so a log file never looks like an unfinished run."""
    root = logging.getLogger()
    record = root.makeRecord("anomaly_clip", logging.ERROR, __file__, 0, line, None, None)
    for handler in root.handlers:
        if isinstance(handler, logging.FileHandler) and handler.stream is not None:
            handler.handle(record)


def run_guarded(entry: Callable[[Sequence[str]], Any], argv: Sequence[str], help_command: str = "--help") -> Any:
    """Call ``entry(argv)`` (``--debug`` removed) as a program does: see the module docstring.
    ``entry`` may import the command's modules itself, so an interrupt while they load is caught
    too. A usage error (flags that do not fit together) ends with where the help is, ``help_command``."""
    debug = debug_requested(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    if debug:
        return entry(argv)
    try:
        return entry(argv)
    except KeyboardInterrupt:
        note_in_log_files("interrupted")
        sys.stderr.write("interrupted\n")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except USER_ERRORS as error:
        from .options import UsageError

        message = error_message(error)
        if isinstance(error, UsageError) and "--help" not in message:
            message += f"; see '{help_command}'"
        note_in_log_files(f"error: {message}")
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(EXIT_USER_ERROR) from None
    except RuntimeError as error:
        if not distributed_timeout(error):
            raise
        import torch.distributed as dist

        sys.stderr.write(f"error: rank {dist.get_rank()}: another torchrun process did not reach a synchronisation "
                         f"point in time ({' '.join(str(error).split())[-120:]}): it stopped, hung or died; "
                         "--dist_timeout SECONDS sets the wait\n")
        raise SystemExit(EXIT_USER_ERROR) from None
