"""Safe file handling shared by checkpoints, resume states, result tables, saved predictions and
memory banks: all-or-nothing writes, weights-only reads, and a lock on a training folder.

Writes: a file is written under a hidden temporary name beside its final path, flushed to disk,
and renamed over the final path only when every write succeeded; an exception (a full disk, an
interrupt) removes the temporary file and leaves any earlier file at the final path untouched. A
killed process can leave a hidden ``.<name>.*.tmp`` file behind, never a truncated final file. A
write that fails for lack of space (``torch.save`` reports it as a ``RuntimeError``, Python as
``OSError``) becomes one :class:`OSError` naming the file and the free space left.

Reads: every torch file (checkpoints, resume states, official checkpoints, memory banks, CLIP
weights) is read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
code. A file that asks for anything else is refused with one line naming it (:func:`read_torch_file`).

Locks: :func:`folder_lock` keeps two training runs from writing into one folder at once.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Union

PathLike = Union[str, os.PathLike]
logger = logging.getLogger(__name__)


def _read_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# files are created with the mode any other file of the process would get (mkstemp makes 0600)
_FILE_MODE = 0o666 & ~_read_umask()


def _temporary_beside(path: Path) -> Path:
    """A fresh hidden file in ``path``'s folder; it keeps the suffix, which some writers need (``np.savez``)."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    os.chmod(name, _FILE_MODE)
    return Path(name)


def _flush_to_disk(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


# below this much free space an error that carries no errno may well be a full disk
LOW_FREE_SPACE = 256 * 1024 ** 2


def write_failure(paths: Sequence[PathLike], error: BaseException) -> OSError:
    """The :class:`OSError` of a failed write of ``paths`` (one folder), in one line: the writer's
    reason, and for a full disk the free space of the file system with advice (``torch.save`` on
    a full disk says only ``unexpected pos ...``).

    A full disk is an ``ENOSPC``/``EDQUOT`` error, ``torch.save``'s stream-writer error, or an
    ``OSError`` without errno (as Pillow's encoders raise) while less than
    :data:`LOW_FREE_SPACE` is free. Any other error keeps its own reason without disk advice
    (Pillow's ``broken data stream`` for a picture wider than JPEG allows once read "is the disk
    full?" with 60 GiB free)."""
    paths = [Path(p) for p in paths]
    target = str(paths[0]) if len(paths) == 1 else f"{', '.join(p.name for p in paths)} in {paths[0].parent}"
    reason = " ".join(str(error).split()) or type(error).__name__
    code = getattr(error, "errno", None)
    try:
        free_bytes = shutil.disk_usage(paths[0].parent).free
    except OSError:
        free_bytes = None
    full = code in (errno.ENOSPC, errno.EDQUOT) or not isinstance(error, OSError) or (
        code is None and (free_bytes is None or free_bytes < LOW_FREE_SPACE))
    if not full:
        failure = OSError(f"cannot write {target} ({reason})")
        failure.errno = code
        return failure
    free = f"{_size(free_bytes)} free there" if free_bytes is not None else "free space unknown"
    failure = OSError(f"cannot write {target} ({reason}); {free}: is the disk full? Free space or choose another "
                      "output folder")
    failure.errno = code or errno.ENOSPC
    return failure


# how torch.save's RuntimeError says the file system refused a write (it carries no errno)
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "unexpected pos", "file write failed")


def is_write_failure(error: BaseException) -> bool:
    """Whether ``error`` is the file system refusing a write: an ``OSError``, or ``torch.save``'s
    ``RuntimeError`` about its stream writer. Any other error raised while a file is produced (a
    failed check, a bug) keeps its own type and message."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError)
                                          and any(marker in str(error) for marker in TORCH_WRITE_FAILURES))


@contextmanager
def atomic_paths(paths: Iterable[PathLike]) -> Iterator[Dict[Path, Path]]:
    """Temporary paths to write instead of ``paths`` (final path -> temporary path).

    When the block ends without an error, every temporary file is synced and then renamed over its
    final path, in the order given: each file is replaced whole or not at all, the group one file
    after another (a process killed between two renames leaves the later files as they were). A
    failed write (:func:`is_write_failure`) becomes the :class:`OSError` of :func:`write_failure`;
    other errors pass through unchanged (nothing is written either way).
    """
    finals = [Path(path) for path in paths]
    temporaries: Dict[Path, Path] = {}
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            temporaries[final] = _temporary_beside(final)
        try:
            yield dict(temporaries)
            for temporary in temporaries.values():
                _flush_to_disk(temporary)
        except (OSError, RuntimeError) as error:
            if not is_write_failure(error):
                raise
            raise write_failure(finals, error) from error
        for final, temporary in temporaries.items():
            os.replace(temporary, final)
    finally:
        for temporary in temporaries.values():
            if temporary.exists():
                temporary.unlink()


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary path to write instead of ``path``; renamed over it only if the block succeeds."""
    with atomic_paths([path]) as temporaries:
        yield next(iter(temporaries.values()))


# ---- reading torch files ------------------------------------------------------------------------
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


# how much of a file :func:`not_a_torch_file` parses as a pickle (the first pickle of a torch file is small)
_PICKLE_PREFIX = 1 << 20
# what pickletools says of a pickle that ends too soon
_TRUNCATED_PICKLE = ("exhausted before seeing STOP", "but only", "not enough data", "no newline found")


def not_a_torch_file(path: PathLike) -> Optional[str]:
    """Why the file at ``path`` cannot be a torch file, or None when it may be one.

    Torch files are zip archives (``torch.save``, TorchScript) or, in the legacy format, begin
    with a pickle; a file that is neither (random bytes, a web page saved by a failed download)
    is named by its first bytes, without running anything (:mod:`pickletools` only parses). A
    pickle of protocol 2 or later (how torch's pickles begin) cut off before its end, and an empty
    file, are reported as truncated; ``.safetensors`` files are not judged here."""
    import io
    import pickletools

    path = Path(path)
    if path.suffix == ".safetensors":
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(_PICKLE_PREFIX)
    except OSError:
        return None
    if size == 0:
        return "the file is empty: maybe truncated by an interrupted copy or download"
    if head.startswith(b"PK"):
        return None
    try:
        for _ in pickletools.genops(io.BytesIO(head)):
            pass
        return None
    except Exception as error:  # noqa: BLE001 - any parse failure means "not a pickle"
        torch_pickle = len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5  # PROTO 2-5: how torch's begin
        if torch_pickle and any(marker in str(error) for marker in _TRUNCATED_PICKLE):
            if len(head) < size:
                return None
            return (f"a pickle that ends after {size} bytes, before its end: maybe truncated by an interrupted copy or "
                    "download")
    return (f"not a torch file (it starts with {head[:32]!r}): neither a zip archive nor a pickle; maybe a web page "
            "saved by a failed download, or another kind of file")


def read_error_reason(error: BaseException, path: Optional[PathLike] = None) -> str:
    """One line saying why a torch file did not load: for a ``path`` that is no torch file at all
    (:func:`not_a_torch_file`), what it starts with; else the global a refused pickle would
    import, else the first sentence of the reader's message."""
    import pickle

    problem = not_a_torch_file(path) if path is not None else None
    if problem is not None:
        return problem
    if isinstance(error, pickle.UnpicklingError):
        found = _UNSUPPORTED_GLOBAL.search(str(error))
        what = f"would import {found.group(1)}" if found else "holds pickle instructions beyond plain data"
        return (f"refused: it {what} (a Python object or code, not tensors); files are read weights-only, so only "
                "tensors and plain containers load. If it comes from a source you trust, re-save its tensors as a "
                "plain state dict")
    reason = " ".join(str(error).split(". ")[0].split()) or type(error).__name__
    return f"{reason}: maybe truncated by an interrupted copy or download, or not a torch file"


def read_torch_file(path: PathLike, role: str = "checkpoint", allowed: Sequence[Any] = ()) -> Any:
    """The contents of the torch file ``path``, read with ``torch.load(weights_only=True)`` on the CPU.

    Only tensors, numbers, strings and plain containers load (plus the types in ``allowed``, e.g.
    NumPy's array reconstruction for resume states written by earlier versions): a file that
    would import anything else (a planted pickle's payload) is refused before anything runs.
    Raises :class:`FileNotFoundError` for a missing file and :class:`ValueError`, one line naming
    the file and its ``role``, for a refused, truncated or foreign file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{role} not found: {path}")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4" from the weights-only reader
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every reader failure means the same to the user
        raise ValueError(f"{role} {path} ({path.stat().st_size} bytes) cannot be loaded: "
                         f"{read_error_reason(error, path)}") from None


# ---- a lock on an output folder -----------------------------------------------------------------
LOCK_NAME = ".anomaly_clip.lock"
_held: Dict[Path, int] = {}


class FolderLockedError(OSError):
    """Another live process holds the lock of a folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_owner(lock: Path) -> Dict[str, Any]:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


@contextmanager
def folder_lock(folder: PathLike, purpose: str = "a training run") -> Iterator[Path]:
    """Hold ``folder/.anomaly_clip.lock`` (created with ``O_EXCL``, holding pid and host) while the
    block runs; nested use in the same process is free.

    A lock left by a process of this host that is gone (killed) is taken over with a warning; a
    live holder, or one on another host, raises :class:`FolderLockedError` naming it and the file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder.resolve() / LOCK_NAME
    if _held.get(lock):
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose}
    for _ in range(3):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
        except FileExistsError:
            owner = _lock_owner(lock)
            pid, host = owner.get("pid"), owner.get("host")
            if host == record["host"] and isinstance(pid, int) and not _alive(pid):
                logger.warning("Taking over %s, left by process %d (no longer running)", lock, pid)
                lock.unlink(missing_ok=True)
                continue
            holder = f"process {pid} on {host}" if pid else "another process"
            raise FolderLockedError(
                f"{folder} is in use by {holder} ({owner.get('purpose', 'a run')}; lock file {lock}): "
                             "wait for it to finish or choose another --save_path; if that run is gone, delete "
                             "the lock file") from None
        with os.fdopen(handle, "w") as stream:
            stream.write(json.dumps(record) + "\n")
        break
    else:
        raise FolderLockedError(f"cannot take the lock {lock}: other processes keep taking it over")
    _held[lock] = 1
    try:
        yield lock
    finally:
        _held.pop(lock, None)
        if _lock_owner(lock).get("pid") == record["pid"]:
            lock.unlink(missing_ok=True)
