"""Folder layouts: how a dataset's files are arranged, and the scan that turns a tree into samples.

A handful of small, parameterised layout kinds describe every supported dataset (see
:mod:`anomaly_clip.data.registry`): a new dataset with a known arrangement is a few lines of data,
not a new script.

* :class:`DefectFolders` -- one folder per state (``good``, or a defect type) per split, masks
  in a parallel folder tree (MVTec AD and its many look-alikes, BMAD, label folders).
* :class:`ImageMaskFolders` -- an ``images`` folder of anomalous images and a ``masks`` folder
  (polyp and lesion segmentation sets).
* :class:`CsvTable` -- a table lists the images, their label and split (VisA, HeadCT).
* :class:`MaskPresence` -- images in one folder, anomalous exactly when a mask file exists or
  has foreground pixels (DAGM, raw KolektorSDD).
* :class:`CustomFolders` and :class:`PlainFolders` -- users' own data.
* :class:`FirstMatching` -- a dataset shipped in more than one arrangement.

Masks are paired with images by file name (``<image stem><suffix>.<any image extension>``),
never by sort order, so a missing or extra file is reported instead of shifting every pair.
"""
from __future__ import annotations

import csv
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .records import ANOMALOUS, NORMAL, Metadata, Sample

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
SPLIT_FOLDERS = {"train": "train", "test": "test", "validation": "validation", "valid": "validation",
                 "val": "validation"}
MAX_LISTED = 10


class LayoutError(ValueError):
    """The folder tree does not match the layout, or its images and masks do not pair up."""


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(directory: Path) -> List[Path]:
    """Image files directly inside ``directory``, sorted by name."""
    return sorted((p for p in directory.iterdir() if is_image_file(p)), key=lambda p: p.name)


def list_folders(directory: Path) -> List[Path]:
    """Visible sub-folders of ``directory``, sorted by name ([] when it is not a folder)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return shown + more


class MaskFinder:
    """Pairs images with mask files by name: ``<stem><suffix>`` with any image extension.

    One index per mask folder, built on first use; masks never paired are reported at the end
    (a naming mismatch shows up as missing masks *and* unused ones).
    """

    def __init__(self, root: Path, suffixes: Sequence[str]):
        self.root = root
        self.suffixes = tuple(suffixes)
        self._index: Dict[Path, Dict[str, Path]] = {}
        self._used: Dict[Path, set] = {}

    def _folder_index(self, folder: Path) -> Dict[str, Path]:
        if folder not in self._index:
            index: Dict[str, Path] = {}
            for path in list_images(folder) if folder.is_dir() else []:
                key = path.stem.lower()
                if key in index:
                    logger.warning("Two masks named %s in %s; using %s", path.stem, folder, index[key].name)
                    continue
                index[key] = path
            self._index[folder] = index
            self._used[folder] = set()
        return self._index[folder]

    def find(self, image: Path, folder: Path) -> Optional[Path]:
        index = self._folder_index(folder)
        for suffix in self.suffixes:
            found = index.get((image.stem + suffix).lower())
            if found is not None and found != image:
                self._used[folder].add(found)
                return found
        return None

    def report_unused(self, exclude: Iterable[Path] = ()) -> None:
        excluded = set(exclude)
        for folder, index in self._index.items():
            unused = sorted(p.name for p in index.values() if p not in self._used[folder] and p not in excluded)
            if unused:
                logger.warning("%d mask file(s) in %s match no image: %s", len(unused), folder, _listing(unused))


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _raise_missing_masks(missing: List[str], hint: str) -> None:
    if missing:
        raise LayoutError(f"{len(missing)} anomalous image(s) have no mask: {_listing(missing)}. {hint}")


class Layout(ABC):
    """How one dataset arranges its files."""

    @property
    def has_masks(self) -> bool:
        """Whether anomalous images come with pixel masks."""
        return True

    @abstractmethod
    def matches(self, root: Path) -> bool:
        """Quick check that ``root`` looks like this layout."""

    @abstractmethod
    def scan(self, root: Path) -> Metadata:
        """Samples per split found under ``root`` (paths relative to ``root``)."""

    @abstractmethod
    def describe(self) -> str:
        """Expected tree, in one line, for error messages and documentation."""


@dataclass(frozen=True)
class DefectFolders(Layout):
    """One folder per state under each split; optional parallel mask folders.

    Templates use ``{cls}`` (a class folder, discovered unless ``class_name`` fixes a single
    class and the templates omit it), ``{split}`` (the folder of a split in ``splits``) and
    ``{state}`` (each sub-folder found there: a normal state or a defect type). ``images`` and
    ``masks`` list candidate templates, the first existing folder wins.
    """

    splits: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    images: Tuple[str, ...] = ("{cls}/{split}/{state}",)
    masks: Tuple[str, ...] = ("{cls}/ground_truth/{state}",)
    mask_suffixes: Tuple[str, ...] = ("_mask",)
    normal_states: Tuple[str, ...] = ("good",)
    anomalous_states: Optional[Tuple[str, ...]] = None
    ignore_states: Tuple[str, ...] = ("ground_truth",)
    class_name: Optional[str] = None
    prefixes: Tuple[str, ...] = ("",)
    masks_required: bool = True

    def __post_init__(self) -> None:
        heads = {template.partition("{state}")[0] for template in self.images}
        if len(heads) != 1 or "{state}" not in self.images[0]:
            raise ValueError(f"image templates must share the part before {{state}}: {self.images}")

    @property
    def has_masks(self) -> bool:
        return bool(self.masks)

    def describe(self) -> str:
        mask = f", masks {self.masks[0]}/<stem>{self.mask_suffixes[0]}.png" if self.masks else ", no masks"
        cls = "" if self.class_name is None else f" (class {self.class_name!r})"
        splits = ", ".join(f"{name}={folder or '-'}" for name, folder in self.splits.items())
        anomalous = "any other" if self.anomalous_states is None else list(self.anomalous_states)
        under = f" under {' or '.join(p or '.' for p in self.prefixes)}" if len(self.prefixes) > 1 else ""
        return (f"{' or '.join(self.images)}{under}, {{state}} normal {list(self.normal_states)}, anomalous "
                f"{anomalous}{mask}; splits {splits}{cls}")

    def _state_kind(self, state: str) -> Optional[int]:
        lowered = state.lower()
        if lowered in {s.lower() for s in self.normal_states}:
            return NORMAL
        if lowered in {s.lower() for s in self.ignore_states}:
            return None
        if self.anomalous_states is None or lowered in {s.lower() for s in self.anomalous_states}:
            return ANOMALOUS
        return None

    def _base(self, root: Path) -> Path:
        for prefix in self.prefixes:
            base = root / prefix if prefix else root
            if any(self._state_dirs(base, cls, folder) for cls in self._classes(base)
                   for folder in self.splits.values()):
                return base
        return root

    def _classes(self, base: Path) -> List[Optional[str]]:
        if self.class_name is not None:
            return [None]
        return [folder.name for folder in list_folders(base)]

    def _state_dirs(self, base: Path, cls: Optional[str], split_folder: str) -> List[Tuple[str, Path]]:
        values = {"cls": cls or "", "split": split_folder}
        head = self.images[0].partition("{state}")[0]
        parent = base / _join(head.format(**values))
        found = []
        for state_dir in list_folders(parent):
            if self._state_kind(state_dir.name) is None:
                continue
            for template in self.images:
                tail = template.partition("{state}")[2].format(**values)
                candidate = state_dir / tail.strip("/") if tail.strip("/") else state_dir
                if candidate.is_dir():
                    found.append((state_dir.name, candidate))
                    break
        return found

    def _mask_dir(self, base: Path, cls: Optional[str], split_folder: str, state: str) -> Optional[Path]:
        values = {"cls": cls or "", "split": split_folder, "state": state}
        candidates = [base / _join(template.format(**values)) for template in self.masks]
        return next((c for c in candidates if c.is_dir()), candidates[0] if candidates else None)

    def matches(self, root: Path) -> bool:
        base = self._base(root)
        return any(self._state_dirs(base, cls, folder) for cls in self._classes(base)
                   for folder in self.splits.values())

    def scan_class(self, root: Path, base: Path, cls: Optional[str], finder: MaskFinder,
                   missing: List[str]) -> Metadata:
        """Samples of one class folder (``cls`` None for a fixed single class)."""
        metadata: Metadata = {}
        class_name = self.class_name if cls is None else cls
        for split, split_folder in self.splits.items():
            samples = []
            states = self._state_dirs(base, cls, split_folder)
            states.sort(key=lambda item: (self._state_kind(item[0]) != NORMAL, item[0]))
            for state, folder in states:
                label = self._state_kind(state)
                mask_dir = self._mask_dir(base, cls, split_folder, state) if label == ANOMALOUS else None
                for image in list_images(folder):
                    mask = finder.find(image, mask_dir) if mask_dir is not None else None
                    if label == ANOMALOUS and self.masks and mask is None:
                        if self.masks_required or (mask_dir is not None and mask_dir.is_dir()):
                            missing.append(_relative(image, root))
                    samples.append(Sample(_relative(image, root), label, class_name,
                                          _relative(mask, root) if mask else None, state))
            if samples:
                metadata[split] = samples
        return metadata

    def scan(self, root: Path) -> Metadata:
        base = self._base(root)
        finder = MaskFinder(root, self.mask_suffixes)
        missing: List[str] = []
        metadata: Metadata = {split: [] for split in self.splits}
        for cls in self._classes(base):
            for split, samples in self.scan_class(root, base, cls, finder, missing).items():
                metadata[split].extend(samples)
        _raise_missing_masks(missing, f"Expected masks at {self.masks[0] if self.masks else '-'}"
                                      f"/<image stem>{self.mask_suffixes[0]}.<ext>.")
        finder.report_unused()
        return {split: samples for split, samples in metadata.items() if samples}


@dataclass(frozen=True)
class ImageMaskFolders(Layout):
    """Anomalous images in one folder, their masks (same stem + suffix) in another; one class.

    ``splits`` maps a split to candidate ``(image folder, mask folder)`` pairs, the first whose
    image folder exists wins; an image folder of ``"*"`` takes every folder except the mask one.
    """

    class_name: str = "object"
    splits: Mapping[str, Tuple[Tuple[str, str], ...]] = field(
        default_factory=lambda: {"test": (("images", "masks"),)})
    mask_suffixes: Tuple[str, ...] = ("",)

    def describe(self) -> str:
        pairs = "; ".join(f"{split}: " + " or ".join(f"{i}/ + {m}/" for i, m in candidates)
                          for split, candidates in self.splits.items())
        return f"{pairs} (masks <image stem>{self.mask_suffixes[0]}.<ext>; every image anomalous)"

    def _pair(self, root: Path, split: str) -> Optional[Tuple[List[Path], Path, bool]]:
        """(image folders, mask folder, whether the image folders were found by ``"*"``)."""
        for image_dir, mask_dir in self.splits[split]:
            masks = root / mask_dir
            if image_dir == "*":
                folders = [f for f in list_folders(root) if f != masks]
                if folders and masks.is_dir():
                    return folders, masks, True
            elif (root / image_dir).is_dir():
                return [root / image_dir], masks, False
        return None

    def matches(self, root: Path) -> bool:
        return any(self._pair(root, split) for split in self.splits)

    def scan(self, root: Path) -> Metadata:
        finder = MaskFinder(root, self.mask_suffixes)
        missing: List[str] = []
        metadata: Metadata = {}
        for split in self.splits:
            pair = self._pair(root, split)
            if pair is None:
                continue
            folders, mask_dir, wildcard = pair
            samples = []
            for folder in folders:
                specie = folder.name if wildcard else ""
                for image in list_images(folder):
                    mask = finder.find(image, mask_dir)
                    if mask is None:
                        missing.append(_relative(image, root))
                        continue
                    samples.append(Sample(_relative(image, root), ANOMALOUS, self.class_name,
                                          _relative(mask, root), specie))
            if samples:
                metadata[split] = samples
        _raise_missing_masks(missing, f"Masks are matched by name: <image stem>{self.mask_suffixes[0]}.<ext>.")
        finder.report_unused()
        return metadata


def _row_values(row: Mapping[Optional[str], Optional[str]]) -> Dict[str, str]:
    """Cells of one table row with surrounding spaces removed (headers such as ``" hemorrhage"``)."""
    return {key.strip(): (value or "").strip() for key, value in row.items() if key is not None}


@dataclass(frozen=True)
class CsvTable(Layout):
    """A table (first existing of ``tables``) lists images with their label and, optionally,
    class, split and mask. Paths come from a column or from templates filled with the row."""

    tables: Tuple[str, ...] = ()
    label_column: str = "label"
    anomalous_values: Tuple[str, ...] = ("anomaly",)
    image_column: Optional[str] = None
    image_templates: Tuple[str, ...] = ()
    class_column: Optional[str] = None
    class_name: Optional[str] = None
    split_column: Optional[str] = None
    split: str = "test"
    mask_column: Optional[str] = None

    @property
    def has_masks(self) -> bool:
        return self.mask_column is not None

    def describe(self) -> str:
        columns = [c for c in (self.class_column, self.split_column, self.label_column,
                               self.image_column, self.mask_column) if c]
        paths = f"images at {' or '.join(self.image_templates)}" if self.image_templates else "image paths in the table"
        return f"table {' or '.join(self.tables)} with columns {columns}; {paths}"

    def _table(self, root: Path) -> Optional[Path]:
        return next((root / t for t in self.tables if (root / t).is_file()), None)

    def matches(self, root: Path) -> bool:
        return self._table(root) is not None

    def _image_path(self, root: Path, values: Mapping[str, str]) -> str:
        if self.image_column is not None:
            return str(values[self.image_column])
        numbers = {key: int(value) if value.isdigit() else value for key, value in values.items()}
        candidates = [template.format(**numbers) for template in self.image_templates]
        return next((c for c in candidates if (root / c).is_file()), candidates[0])

    def scan(self, root: Path) -> Metadata:
        table = self._table(root)
        if table is None:
            raise LayoutError(f"no table found in {root}: looked for {list(self.tables)}")
        with open(table, newline="", encoding="utf-8-sig") as handle:
            rows = [_row_values(row) for row in csv.DictReader(handle)]
        needed = [c for c in (self.label_column, self.image_column, self.class_column, self.split_column,
                              self.mask_column) if c]
        absent = [c for c in needed if rows and c not in rows[0]]
        if absent:
            raise LayoutError(f"{table} lacks column(s) {absent}; it has {sorted(rows[0])}")
        anomalous = {str(v).lower() for v in self.anomalous_values}
        metadata: Metadata = {}
        missing_files: List[str] = []
        missing_masks: List[str] = []
        for values in rows:
            label = ANOMALOUS if str(values[self.label_column]).lower() in anomalous else NORMAL
            image = self._image_path(root, values)
            mask = str(values[self.mask_column]) if self.mask_column and label == ANOMALOUS else ""
            if not (root / image).is_file():
                missing_files.append(image)
            if label == ANOMALOUS and self.mask_column:
                if not mask:
                    missing_masks.append(image)
                elif not (root / mask).is_file():
                    missing_files.append(mask)
            split = str(values[self.split_column]) if self.split_column else self.split
            class_name = str(values[self.class_column]) if self.class_column else self.class_name
            metadata.setdefault(split, []).append(Sample(image, label, class_name or "object", mask or None))
        if missing_files:
            raise LayoutError(f"{table} lists {len(missing_files)} file(s) missing under {root}: "
                              f"{_listing(missing_files)}")
        _raise_missing_masks(missing_masks, f"{table} gives no mask for them.")
        return metadata


@dataclass(frozen=True)
class MaskPresence(Layout):
    """Images of one folder per split; an image is anomalous when its mask file exists
    (``from_content`` False) or when that mask has foreground pixels (``from_content`` True).

    ``splits`` maps a split to its image folder template (``{cls}`` a discovered class folder,
    ``{group}`` every folder of the root, both as in :class:`DefectFolders`); ``mask_folder`` is
    relative to the image folder ("" for the same folder).
    """

    splits: Mapping[str, str] = field(default_factory=lambda: {"test": "{cls}"})
    mask_folder: str = ""
    mask_suffixes: Tuple[str, ...] = ("_label",)
    class_name: Optional[str] = None
    from_content: bool = False

    def describe(self) -> str:
        where = f"{self.mask_folder}/" if self.mask_folder else ""
        rule = "has foreground pixels" if self.from_content else "exists"
        folders = ", ".join(f"{split}={template}" for split, template in self.splits.items())
        return f"images in {folders}; anomalous when {where}<stem>{self.mask_suffixes[0]}.<ext> {rule}"

    def _folders(self, root: Path, template: str) -> List[Tuple[str, Path]]:
        if "{cls}" in template or "{group}" in template:
            key = "cls" if "{cls}" in template else "group"
            return [(folder.name, root / template.format(**{key: folder.name})) for folder in list_folders(root)
                    if (root / template.format(**{key: folder.name})).is_dir()]
        return [("", root / template)] if (root / template).is_dir() else []

    def _is_mask_name(self, path: Path) -> bool:
        return any(s and path.stem.lower().endswith(s.lower()) for s in self.mask_suffixes)

    def matches(self, root: Path) -> bool:
        return any(self._folders(root, template) for template in self.splits.values())

    def scan(self, root: Path) -> Metadata:
        finder = MaskFinder(root, self.mask_suffixes)
        metadata: Metadata = {}
        for split, template in self.splits.items():
            samples = []
            for name, folder in self._folders(root, template):
                class_name = self.class_name or name
                specie = name if self.class_name is not None and "{group}" in template else ""
                mask_dir = folder / self.mask_folder if self.mask_folder else folder
                for image in list_images(folder):
                    if self._is_mask_name(image):
                        continue
                    mask = finder.find(image, mask_dir)
                    anomalous = mask is not None and (not self.from_content or _has_foreground(mask))
                    samples.append(Sample(_relative(image, root), ANOMALOUS if anomalous else NORMAL, class_name,
                                          _relative(mask, root) if anomalous else None, specie))
            if samples:
                metadata[split] = samples
        if not self.from_content:
            finder.report_unused()
        return metadata


def _has_foreground(mask: Path) -> bool:
    from .imaging import read_binary_mask

    return bool(read_binary_mask(mask).any())


@dataclass(frozen=True)
class CustomFolders(Layout):
    """Users' own data: ``<root>/<class>/<state>/`` or ``<root>/<class>/<split>/<state>/``.

    A state folder named ``good``, ``normal`` or ``ok`` holds normal images, every other one
    anomalous images of that defect type. Masks are optional: ``<class>/ground_truth/<state>/``
    or ``<class>/masks/<state>/`` (also inside a split folder), named ``<stem>.<ext>`` or
    ``<stem>_mask.<ext>``. Once a defect folder has a mask folder, each of its images needs a mask.
    """

    normal_states: Tuple[str, ...] = ("good", "normal", "ok")
    mask_folders: Tuple[str, ...] = ("ground_truth", "masks")
    mask_suffixes: Tuple[str, ...] = ("_mask", "", "_label", "_gt")

    def describe(self) -> str:
        return ("<class>/[train|test/]<good|defect>/ images, optional masks in "
                "<class>/[<split>/]ground_truth/<defect>/<stem>_mask.png")

    def _flavours(self) -> Tuple[DefectFolders, DefectFolders]:
        ignore = self.mask_folders + tuple(SPLIT_FOLDERS)
        with_splits = DefectFolders(
            splits={folder: folder for folder in SPLIT_FOLDERS},
            images=("{cls}/{split}/{state}",),
            masks=tuple(f"{{cls}}/{m}/{{state}}" for m in self.mask_folders)
            + tuple(f"{{cls}}/{{split}}/{m}/{{state}}" for m in self.mask_folders),
            mask_suffixes=self.mask_suffixes, normal_states=self.normal_states, ignore_states=ignore,
            masks_required=False)
        flat = replace(with_splits, splits={"test": ""}, images=("{cls}/{state}",),
                       masks=tuple(f"{{cls}}/{m}/{{state}}" for m in self.mask_folders))
        return with_splits, flat

    def matches(self, root: Path) -> bool:
        return any(flavour.matches(root) for flavour in self._flavours())

    def scan(self, root: Path) -> Metadata:
        with_splits, flat = self._flavours()
        finder = MaskFinder(root, self.mask_suffixes)
        missing: List[str] = []
        metadata: Metadata = {}
        unmasked: List[str] = []
        for class_dir in list_folders(root):
            has_splits = any((class_dir / folder).is_dir() for folder in SPLIT_FOLDERS)
            flavour = with_splits if has_splits else flat
            found = flavour.scan_class(root, root, class_dir.name, finder, missing)
            for split, samples in found.items():
                key = SPLIT_FOLDERS.get(split, split)
                metadata.setdefault(key, []).extend(samples)
                if any(s.is_anomalous and not s.mask_path for s in samples):
                    unmasked.append(class_dir.name)
        _raise_missing_masks(missing, "A defect folder with a mask folder needs a mask for each image "
                                      "(<stem>.<ext> or <stem>_mask.<ext>).")
        finder.report_unused()
        if unmasked and any(s.mask_path for samples in metadata.values() for s in samples):
            logger.warning("Classes %s have anomalous images without masks while others have masks; "
                           "load them as image-level only or add their masks", sorted(set(unmasked)))
        return metadata


@dataclass(frozen=True)
class PlainFolders(Layout):
    """A folder of normal images and a folder of anomalous ones (paths relative to the root),
    optionally a folder of masks named after the anomalous images."""

    normal_dir: Optional[str] = None
    anomalous_dir: Optional[str] = None
    mask_dir: Optional[str] = None
    class_name: str = "object"
    split: str = "test"
    mask_suffixes: Tuple[str, ...] = ("", "_mask")

    @property
    def has_masks(self) -> bool:
        return self.mask_dir is not None

    def with_folders(self, normal_dir: Optional[str], anomalous_dir: Optional[str],
                     mask_dir: Optional[str] = None, split: Optional[str] = None) -> "PlainFolders":
        return replace(self, normal_dir=normal_dir, anomalous_dir=anomalous_dir, mask_dir=mask_dir,
                       split=split or self.split)

    def describe(self) -> str:
        return "--normal-dir DIR and/or --anomalous-dir DIR (optional --mask-dir DIR), relative to the root"

    def matches(self, root: Path) -> bool:
        return any(d and (root / d).is_dir() for d in (self.normal_dir, self.anomalous_dir))

    def scan(self, root: Path) -> Metadata:
        if not self.normal_dir and not self.anomalous_dir:
            raise LayoutError("plain folders need --normal-dir and/or --anomalous-dir")
        for option, folder in (("normal", self.normal_dir), ("anomalous", self.anomalous_dir),
                               ("mask", self.mask_dir)):
            if folder and not (root / folder).is_dir():
                raise LayoutError(f"{option} folder {root / folder} does not exist")
        finder = MaskFinder(root, self.mask_suffixes)
        samples: List[Sample] = []
        missing: List[str] = []
        for folder, label in ((self.normal_dir, NORMAL), (self.anomalous_dir, ANOMALOUS)):
            if not folder:
                continue
            state = "good" if label == NORMAL else Path(folder).name
            for image in list_images(root / folder):
                mask = finder.find(image, root / self.mask_dir) if label == ANOMALOUS and self.mask_dir else None
                if label == ANOMALOUS and self.mask_dir and mask is None:
                    missing.append(_relative(image, root))
                samples.append(Sample(_relative(image, root), label, self.class_name,
                                      _relative(mask, root) if mask else None, state))
        _raise_missing_masks(missing, f"Masks in {self.mask_dir} are matched by name: "
                                      f"<stem>.<ext> or <stem>_mask.<ext>.")
        finder.report_unused()
        return {self.split: samples} if samples else {}


@dataclass(frozen=True)
class FirstMatching(Layout):
    """A dataset distributed in several arrangements: the first that matches the tree is used."""

    alternatives: Tuple[Layout, ...] = ()

    @property
    def has_masks(self) -> bool:
        return any(layout.has_masks for layout in self.alternatives)

    def describe(self) -> str:
        return " | or | ".join(layout.describe() for layout in self.alternatives)

    def matches(self, root: Path) -> bool:
        return any(layout.matches(root) for layout in self.alternatives)

    def chosen(self, root: Path) -> Layout:
        for layout in self.alternatives:
            if layout.matches(root):
                return layout
        raise LayoutError(f"{root} matches none of: {self.describe()}")

    def scan(self, root: Path) -> Metadata:
        return self.chosen(root).scan(root)
