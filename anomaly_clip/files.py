"""All-or-nothing file writes, shared by checkpoints, result tables and saved predictions.

A file is written under a hidden temporary name beside its final path, flushed to disk, and
renamed over the final path only when every write succeeded; an exception (a full disk, an
interrupt) removes the temporary file and leaves any earlier file at the final path untouched.
A killed process can leave a hidden ``.<name>.*.tmp`` file behind, never a truncated final file.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterable, Iterator, Union

PathLike = Union[str, os.PathLike]


def _temporary_beside(path: Path) -> Path:
    """A fresh hidden file in ``path``'s folder; it keeps the suffix, which some writers need (``np.savez``)."""
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    return Path(name)


def _flush_to_disk(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_paths(paths: Iterable[PathLike]) -> Iterator[Dict[Path, Path]]:
    """Temporary paths to write instead of ``paths`` (final path -> temporary path).

    When the block ends without an error, every temporary file is synced and then renamed over
    its final path, so either all files of the group are replaced or none is.
    """
    finals = [Path(path) for path in paths]
    temporaries: Dict[Path, Path] = {}
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            temporaries[final] = _temporary_beside(final)
        yield dict(temporaries)
        for temporary in temporaries.values():
            _flush_to_disk(temporary)
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
