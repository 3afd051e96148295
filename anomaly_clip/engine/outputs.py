"""The files runs write beside their results: ``predictions.csv``, maps at the original
resolution (compressed ``.npz``, float32 or float16, or 16-bit PNG) and overlay panels of
``predict``; per-class ``.npz`` predictions and panels of ``test``.

* **Names from user data** (class names, file stems, folder names) go through
  :func:`safe_file_name`: a name that is already a safe file name is kept; any other (too long,
  path separators, ``..``, reserved or control characters, leading dot, Windows device names)
  is cleaned, cut to :data:`MAX_NAME_BYTES` and given a short hash of the original, and
  :class:`UniqueNames` resolves the names that still collide (e.g. ``Bottle`` and ``bottle`` on a
  case-insensitive disk) deterministically with a hash of what they name.
* **Writing does not hold up scoring on a GPU**: :class:`OutputWriter` encodes and writes files
  on a few background threads behind a bounded queue (memory stays bounded: at most ``pending``
  files wait; :func:`writer_threads` says how many for a device), each file all or nothing (:func:`anomaly_clip.files.atomic_path`). A file that cannot be
  written is reported by name and reason (a warning at once, and :class:`OutputWriteError` from
  :meth:`OutputSummary.raise_for_failures` at the end), never lost silently, and never stops the
  run: results are complete before optional per-image files can fail them.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from ..clip.config import RANDOM_WEIGHTS_WARNING
from ..files import atomic_path
from .config import MAP_DTYPES, MAP_FORMATS, OVERLAY_FORMATS
from .inference import BatchOutput, ImagePrediction
from .visualization import (RANDOM_WEIGHTS_NOTE, ColourScale, PanelContent, anomaly_panel, evaluation_image,
                            image_caption, save_panel)

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("path", "score", "label", "error")
WARNING_COLUMN = "warning"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # read once, at import, while no other thread can change it


def shareable(path: Path) -> None:
    """Give a file written through a private temporary file (mode 0600) the permissions a plain
    ``open`` would have given it (0666 less the umask), as outputs are meant to be shared."""
    os.chmod(path, _FILE_MODE)


# ---- predictions.csv ---------------------------------------------------------------------------------
def write_predictions_csv(rows: Sequence[ImagePrediction], path: str | os.PathLike,
                          warning: Optional[str] = None) -> Path:
    """``path,score,label,error``: label 0/1 or empty when no threshold is known, score empty for
    skipped files; a ``warning`` column repeats ``warning`` (e.g. random weights) on every row, so
    no copy of the scores travels without it. Written all or nothing."""
    path = Path(path)
    with atomic_path(path) as temporary:
        with temporary.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS + ((WARNING_COLUMN,) if warning else ()))
            for row in rows:
                writer.writerow([row.path, "" if row.score is None else f"{row.score:.9g}",
                                 "" if row.label is None else row.label, row.error] + ([warning] if warning else []))
        shareable(temporary)
    return path


def read_predictions_csv(path: str | os.PathLike) -> List[ImagePrediction]:
    with Path(path).open(newline="") as handle:
        return [ImagePrediction(row["path"], score=float(row["score"]) if row["score"] else None,
                                label=int(row["label"]) if row["label"] else None, error=row["error"])
                for row in csv.DictReader(handle)]


# ---- safe names -------------------------------------------------------------------------------------
MAX_NAME_BYTES = 120
HASH_LENGTH = 8
_ALLOWED_PUNCTUATION = frozenset(" -_.,+=@()[]{}#~")
_WINDOWS_DEVICES = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                              *(f"lpt{i}" for i in range(1, 10))})


def name_digest(text: str) -> str:
    """A short, stable hash of ``text`` (the first :data:`HASH_LENGTH` hex digits of its SHA-1)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]


def _allowed(character: str) -> bool:
    return character.isalnum() or character in _ALLOWED_PUNCTUATION


def is_safe_file_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> bool:
    """Whether ``name`` can be used as one file-name component as it is, on every common system."""
    return (bool(name) and len(name.encode("utf-8", "surrogatepass")) <= max_bytes and all(map(_allowed, name))
            and not name.startswith((".", " ")) and not name.endswith((".", " "))
            and name.split(".")[0].casefold() not in _WINDOWS_DEVICES)


def _cut(text: str, max_bytes: int) -> str:
    """``text`` shortened to at most ``max_bytes`` UTF-8 bytes, never inside a character."""
    encoded = text.encode("utf-8", "surrogatepass")
    return text if len(encoded) <= max_bytes else encoded[:max_bytes].decode("utf-8", "ignore")


def safe_file_name(name: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """One file-name component for a name taken from user data (a class name, a file or folder name).

    A safe name (:func:`is_safe_file_name`) is returned unchanged. Any other has each disallowed
    character (path separators, ``:*?"<>|``, control characters, ...) replaced by ``_``, leading
    dots and spaces and trailing dots dropped, a Windows device name (``con``, ``aux.txt``)
    prefixed with ``_``, is cut to fit ``max_bytes`` UTF-8 bytes, and ends in
    ``~`` plus a hash of the original name, so that two names cleaned alike stay apart and the
    result is the same on every run and every process.
    """
    if is_safe_file_name(name, max_bytes):
        return name
    cleaned = "".join(c if _allowed(c) else "_" for c in name).lstrip(". ").rstrip(". ") or "_"
    if cleaned.split(".")[0].casefold() in _WINDOWS_DEVICES:
        cleaned = f"_{cleaned}"
    return f"{_cut(cleaned, max_bytes - HASH_LENGTH - 1).rstrip('. ')}~{name_digest(name)}"


class UniqueNames:
    """Safe names for the files of one output folder, unique even where the disk ignores case.

    :meth:`claim` returns :func:`safe_file_name` of a name; when that name (ignoring case) was
    already given to another key, the key's hash is appended. The same keys claimed in the same
    order always get the same names.
    """

    def __init__(self, max_bytes: int = MAX_NAME_BYTES):
        self.max_bytes = max_bytes
        self.owners: Dict[str, str] = {}
        self.lock = threading.Lock()

    def claim(self, name: str, key: Optional[str] = None) -> str:
        """The unique safe name of ``name`` for ``key`` (default: the name itself)."""
        key = name if key is None else key
        safe = safe_file_name(name, self.max_bytes)
        with self.lock:
            owner = self.owners.get(safe.casefold())
            if owner is not None and owner != key:
                safe = f"{_cut(safe, self.max_bytes - HASH_LENGTH - 1)}~{name_digest(key)}"
            self.owners[safe.casefold()] = key
        return safe

    def claim_path(self, relative: Path, key: str) -> Path:
        """A relative path with every folder made safe and its whole unique (see :meth:`claim`)."""
        folders = [safe_file_name(part, self.max_bytes) for part in relative.parts[:-1] if part not in ("", ".")]
        name = safe_file_name(relative.name or "_", self.max_bytes)
        joined = "/".join(folders + [name])
        with self.lock:
            owner = self.owners.get(joined.casefold())
            if owner is not None and owner != key:
                name = f"{_cut(name, self.max_bytes - HASH_LENGTH - 1)}~{name_digest(key)}"
                joined = "/".join(folders + [name])
            self.owners[joined.casefold()] = key
        return Path(*folders, name)


def output_name(path: str | os.PathLike, root: Path) -> Path:
    """Relative name of an input's output files: its path under ``root`` with its suffix kept
    (``sub/a.jpg`` -> ``sub/a.jpg``; the writers append ``.npz`` / ``.jpg``), so files of one
    stem never collide; a path outside ``root`` gives its file name."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(root)
    except ValueError:
        return Path(resolved.name)


def common_root(paths: Sequence[str | os.PathLike]) -> Path:
    """The deepest folder holding all ``paths`` (names of outputs are relative to it)."""
    folders = [str(Path(p).resolve().parent) for p in paths]
    return Path(os.path.commonpath(folders)) if folders else Path.cwd()


# ---- 16-bit PNG maps ---------------------------------------------------------------------------------
PNG16_LOW, PNG16_HIGH = "anomaly_clip.low", "anomaly_clip.high"


def write_map_png16(anomaly_map: np.ndarray, path: str | os.PathLike) -> None:
    """Store a float map as a 16-bit PNG scaled over its own min..max; the two values are kept in
    the PNG's text chunks so :func:`read_map_png16` restores the map (to 1/65535 of its range)."""
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    span = high - low
    scaled = (anomaly_map - low) / span if span > 0 else np.zeros_like(anomaly_map)
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG16_LOW, repr(low))
    info.add_text(PNG16_HIGH, repr(high))
    image = Image.fromarray(np.rint(scaled * 65535).astype(np.uint16))
    image.save(path, format="PNG", pnginfo=info)


def read_map_png16(path: str | os.PathLike) -> np.ndarray:
    """The float32 map of a :func:`write_map_png16` file."""
    with Image.open(path) as image:
        low, high = float(image.text[PNG16_LOW]), float(image.text[PNG16_HIGH])
        values = np.asarray(image, dtype=np.float64)
    return (low + values / 65535.0 * (high - low)).astype(np.float32)


# ---- background writing -----------------------------------------------------------------------------
DEFAULT_WRITER_THREADS = 2


def writer_threads(device) -> int:
    """Background writer threads for a model on ``device``: :data:`DEFAULT_WRITER_THREADS` when it
    scores on an accelerator (the CPU is then free to encode while the GPU scores), 0 (write in
    the scoring thread, between batches) when it scores on the CPU: its matrix products already
    use every core, and a busy writer thread makes each of them wait for the core it took
    (``scripts/benchmark_outputs.py`` measured 2-core runs twice as slow with two writer threads)."""
    return 0 if str(device).startswith("cpu") else DEFAULT_WRITER_THREADS


class OutputWriteError(OSError):
    """Optional output files that could not be written (the results themselves were written)."""


@dataclass
class OutputSummary:
    """What an :class:`OutputWriter` wrote: ``files`` and their ``bytes``, and the (path, reason)
    of each file it could not write."""

    files: int = 0
    bytes: int = 0
    failures: List[Tuple[Path, str]] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.files} files, {format_size(self.bytes)}"
        return text + (f"; {len(self.failures)} could not be written" if self.failures else "")

    def raise_for_failures(self) -> None:
        """:class:`OutputWriteError` naming the files that could not be written (none: nothing)."""
        if self.failures:
            shown = "; ".join(f"{path}: {reason}" for path, reason in self.failures[:3])
            more = f" (and {len(self.failures) - 3} more, listed in the log)" if len(self.failures) > 3 else ""
            raise OutputWriteError(f"{len(self.failures)} output file(s) could not be written, the results were: "
                                   f"{shown}{more}")


def format_size(size: int) -> str:
    """``1.3 MB``-style size of a byte count (powers of 1000)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


class OutputWriter:
    """Writes files on ``threads`` background threads (0: in the caller's thread), at most
    ``pending`` waiting at a time: :meth:`submit` blocks while the queue is full, so a fast
    producer cannot pile up images in memory. Each job ``write(temporary_path)`` writes one file,
    renamed to its final path only when complete; an exception in a job is reported (a warning
    naming the file, and in :attr:`summary`) and the other files go on.
    """

    def __init__(self, threads: int = DEFAULT_WRITER_THREADS, pending: Optional[int] = None):
        if threads < 0:
            raise ValueError(f"threads must be >= 0, got {threads}")
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="anomaly_clip_writer") if threads else None
        self.slots = threading.BoundedSemaphore(pending or 2 * threads + 2) if threads else None
        self.summary = OutputSummary()
        self.lock = threading.Lock()
        self.closed = False

    def submit(self, path: Path, write: Callable[[Path], object], background: bool = True) -> None:
        """Write ``path`` with ``write`` (called with a temporary path beside it): on a worker
        thread, or now in this thread when ``background`` is False or the writer has no threads."""
        if self.closed:
            raise RuntimeError("the output writer is closed")
        if self.pool is None or not background:
            self._run(path, write)
            return
        self.slots.acquire()
        try:
            future = self.pool.submit(self._run, path, write)
        except BaseException:
            self.slots.release()
            raise
        future.add_done_callback(lambda _: self.slots.release())

    def _run(self, path: Path, write: Callable[[Path], object]) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                write(temporary)
                shareable(temporary)
            size = path.stat().st_size
        except Exception as error:  # noqa: BLE001 - every failure is reported by file, none stops the run
            reason = f"{type(error).__name__}: {error}"
            logger.warning("Could not write %s: %s", path, reason)
            with self.lock:
                self.summary.failures.append((path, reason))
            return
        with self.lock:
            self.summary.files += 1
            self.summary.bytes += size

    def close(self) -> OutputSummary:
        """Wait for every file and return the :class:`OutputSummary` (idempotent)."""
        if not self.closed:
            self.closed = True
            if self.pool is not None:
                self.pool.shutdown(wait=True)
        return self.summary

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None and self.pool is not None:
            self.closed = True
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.close()


# ---- predict's per-image files ----------------------------------------------------------------------
def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    np.savez_compressed(path, **arrays)


def _save_overlay(path: Path, original: np.ndarray, values: np.ndarray, value_range: Tuple[float, float],
                  content: PanelContent, image_format: str) -> None:
    save_panel(anomaly_panel(original, values, value_range, content), path, image_format)


class PredictionFiles:
    """The per-image files of a predict run (a :data:`~anomaly_clip.engine.inference.MapSink`):
    maps at original resolution under ``maps/`` (``npz``: compressed, ``map`` in ``map_dtype``
    and ``score``; ``png16``) and overlay panels under ``overlays/`` (``overlay_format`` jpg or
    png), named after each input's path below ``root`` (made safe, see :class:`UniqueNames`),
    written by ``writer`` in the background.

    Overlays share one colour ``scale`` (:class:`~anomaly_clip.engine.visualization.ColourScale`:
    ``--map_range``, else the calibration's map range, else the first map's, said on every panel).
    """

    def __init__(self, directory: str | os.PathLike, root: Path, writer: OutputWriter, save_maps: Optional[str] = None,
                 overlays: bool = False, image_threshold: Optional[float] = None,
                 pixel_threshold: Optional[float] = None, scale: Optional[ColourScale] = None,
                 map_dtype: str = "float32", overlay_format: str = "jpg", random_weights: bool = False):
        if save_maps is not None and save_maps not in MAP_FORMATS:
            raise ValueError(f"save_maps must be one of {MAP_FORMATS}, got {save_maps!r}")
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype!r}")
        if map_dtype != "float32" and save_maps != "npz":
            raise ValueError(f"map_dtype {map_dtype} applies to npz maps (save_maps='npz'); png16 maps are 16-bit "
                             "already")
        if overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay_format must be one of {OVERLAY_FORMATS}, got {overlay_format!r}")
        self.directory = Path(directory)
        self.root = root
        self.writer = writer
        self.save_maps = save_maps
        self.overlays = overlays
        self.image_threshold = image_threshold
        self.pixel_threshold = pixel_threshold
        self.scale = scale or ColourScale()
        self.map_dtype = np.dtype(map_dtype)
        self.overlay_format = overlay_format
        self.random_weights = random_weights
        self.names = UniqueNames()

    @property
    def needs_originals(self) -> bool:
        return self.overlays

    @property
    def writes_files(self) -> bool:
        return self.save_maps is not None or self.overlays

    def target(self, kind: str, path: str, suffix: str) -> Path:
        """Where the ``kind`` file (``maps``/``overlays``) of input ``path`` goes."""
        name = self.names.claim_path(output_name(path, self.root), key=str(Path(path).resolve()))
        return self.directory / kind / name.with_name(name.name + suffix)

    def panel_content(self, row: ImagePrediction, values: np.ndarray) -> PanelContent:
        notes = [RANDOM_WEIGHTS_NOTE] if self.random_weights else []
        if self.scale.note:
            notes.append(self.scale.note)
        mask = values >= self.pixel_threshold if self.pixel_threshold is not None else None
        return PanelContent(header=[image_caption(row.score, row.label, self.image_threshold)],
                            pixel_threshold=self.pixel_threshold, predicted_mask=mask, notes=notes)

    def __call__(self, row: ImagePrediction, anomaly_map: torch.Tensor, original: Optional[np.ndarray]) -> None:
        values = anomaly_map.float().cpu().numpy()
        if self.save_maps == "npz":
            self.writer.submit(self.target("maps", row.path, ".npz"),
                               partial(_save_npz, map=values.astype(self.map_dtype), score=np.float32(row.score)))
        elif self.save_maps == "png16":
            self.writer.submit(self.target("maps", row.path, ".png"), partial(write_map_png16, values))
        if self.overlays:
            if original is None:
                raise ValueError("overlays need the original images (predict_files(..., keep_originals=True))")
            value_range = self.scale.fix(values)
            self.writer.submit(self.target("overlays", row.path, f".{self.overlay_format}"),
                               partial(_save_overlay, original=original, values=values, value_range=value_range,
                                       content=self.panel_content(row, values), image_format=self.overlay_format))


# ---- test's per-image panels --------------------------------------------------------------------------
def _save_evaluation_panel(path: Path, image_path: str, values: np.ndarray, value_range: Tuple[float, float],
                           content: PanelContent, image_format: str) -> None:
    image = evaluation_image(image_path, values.shape[-1])
    save_panel(anomaly_panel(image, values, value_range, content), path, image_format)


class EvaluationPanels:
    """``test --visualize``: one panel per evaluated image under ``directory/<class>/`` (the
    design of predict's overlays, ground truth outlined in green where the dataset has masks),
    drawn and written by ``writer`` in the background. The image is read as datasets read it and
    resized to the maps' size with the model's bicubic resize. With ``image_threshold`` each panel
    shows the decision on ``decision_scores(output)`` (the calibration's per-image score; default:
    the batch's scores)."""

    def __init__(self, directory: str | os.PathLike, writer: OutputWriter, scale: Optional[ColourScale] = None,
                 has_masks: bool = True, image_threshold: Optional[float] = None,
                 decision_scores: Optional[Callable[[BatchOutput], torch.Tensor]] = None,
                 pixel_threshold: Optional[float] = None, overlay_format: str = "jpg", random_weights: bool = False):
        if overlay_format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay_format must be one of {OVERLAY_FORMATS}, got {overlay_format!r}")
        self.directory = Path(directory)
        self.writer = writer
        self.scale = scale or ColourScale()
        self.has_masks = has_masks
        self.image_threshold, self.pixel_threshold = image_threshold, pixel_threshold
        self.decision_scores = decision_scores
        self.overlay_format = overlay_format
        self.random_weights = random_weights
        self.classes = UniqueNames()
        self.names: Dict[str, UniqueNames] = {}

    def target(self, class_name: str, path: str) -> Path:
        """``<class>/<folder>_<stem>.<format>``, both parts made safe and unique."""
        folder = self.classes.claim(class_name)
        names = self.names.setdefault(folder, UniqueNames())
        name = names.claim(f"{Path(path).parent.name}_{Path(path).stem}", key=str(path))
        return self.directory / folder / f"{name}.{self.overlay_format}"

    def __call__(self, output: BatchOutput) -> None:
        if not output.paths:
            return
        maps = output.maps.float().cpu().numpy()
        masks = output.masks.cpu().numpy() if output.masks is not None and self.has_masks else [None] * len(maps)
        labels = output.labels.cpu().tolist() if output.labels is not None else [None] * len(maps)
        decided = self.decision_scores(output) if self.decision_scores is not None else output.scores
        scores = decided.float().cpu().tolist()
        for path, name, values, truth, label, score in zip(output.paths, output.class_names, maps, masks, labels,
                                                           scores):
            value_range = self.scale.fix(values)
            notes = [RANDOM_WEIGHTS_NOTE] if self.random_weights else []
            if self.scale.note:
                notes.append(self.scale.note)
            header = [f"{name} | ground truth: {'ANOMALOUS' if label else 'normal'} | "
                      + image_caption(score, None if self.image_threshold is None else int(score >= self.image_threshold),
                                      self.image_threshold)]
            content = PanelContent(
                header=header, pixel_threshold=self.pixel_threshold,
                predicted_mask=values >= self.pixel_threshold if self.pixel_threshold is not None else None,
                truth=truth, annotated=self.has_masks, notes=notes)
            self.writer.submit(self.target(str(name), path),
                               partial(_save_evaluation_panel, image_path=path, values=values,
                                       value_range=value_range, content=content, image_format=self.overlay_format))


def random_weights_mark(random_init: bool) -> Optional[str]:
    """The warning every output of a random-weights model carries (None for real weights)."""
    return RANDOM_WEIGHTS_WARNING if random_init else None
