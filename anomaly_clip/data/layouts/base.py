"""What every layout shares: the layout interface, the folder scan, and mask pairing by name.

A folder layout only says where its images are: :meth:`FolderLayout.groups` yields one
:class:`ImageGroup` per folder of images (split, class, label or "decided by the mask", defect
type, candidate mask folders). The scan itself -- listing images, pairing masks by name,
collecting anomalous images without a mask, refusing a mask named after two images or an image
folder inside a mask folder, reporting masks that match no image -- is written once, in
:meth:`FolderLayout.scan`.

Folder names that carry meaning are compared by :func:`folder_key` (lower case, punctuation and
spaces removed, so ``Ground Truth``, ``ground_truth`` and ``groundtruth`` are one name).
"""
from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

from ..imaging import is_image_file
from ..records import ANOMALOUS, NORMAL, Metadata, Sample

logger = logging.getLogger(__name__)

MAX_LISTED = 10
SPLIT_FOLDERS = {"train": "train", "test": "test", "validation": "validation", "valid": "validation",
                 "val": "validation"}
"""Folder names of splits (by :func:`folder_key`) -> the split they hold."""
NORMAL_STATE_NAMES = ("good", "normal", "ok", "nominal", "negative", "healthy", "no_defect", "defect_free")
"""State folders of normal images in users' own data (``custom``); every other state folder is a defect type."""
MASK_FOLDER_NAMES = ("ground_truth", "masks", "mask", "gt")
"""Folders of masks in users' own data (``custom``); nothing under them is ever an image."""


class LayoutError(ValueError):
    """The folder tree does not match the layout, or its images and masks do not pair up."""


def folder_key(name: str) -> str:
    """Comparison key of a meaningful folder name: ``"Ground Truth"`` -> ``"groundtruth"``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


_NORMAL_KEYS = frozenset(folder_key(name) for name in NORMAL_STATE_NAMES)
_MASK_KEYS = frozenset(folder_key(name) for name in MASK_FOLDER_NAMES)


def is_normal_state(name: str) -> bool:
    """Whether a state folder called ``name`` holds normal images (:data:`NORMAL_STATE_NAMES`)."""
    return folder_key(name) in _NORMAL_KEYS


def is_mask_folder(name: str) -> bool:
    """Whether a folder called ``name`` holds masks (:data:`MASK_FOLDER_NAMES`)."""
    return folder_key(name) in _MASK_KEYS


def split_of(name: str) -> Optional[str]:
    """The split a folder called ``name`` holds (:data:`SPLIT_FOLDERS`), None for other folders."""
    return SPLIT_FOLDERS.get(folder_key(name))


def list_images(directory: Path) -> List[Path]:
    """Image files directly inside ``directory``, sorted by name ([] when it is not a folder)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if is_image_file(p)), key=lambda p: p.name)


def list_folders(directory: Path) -> List[Path]:
    """Visible sub-folders of ``directory``, sorted by name ([] when it is not a folder)."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def listing(items: Sequence[object]) -> str:
    """``a, b, c and 5 more``: at most :data:`MAX_LISTED` items of a list for a message."""
    shown = ", ".join(str(item) for item in items[:MAX_LISTED])
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return shown + more


def relative(path: Path, root: Path) -> str:
    """``path`` relative to the dataset ``root``, with forward slashes (as metadata stores it)."""
    return path.relative_to(root).as_posix()


def raise_missing_masks(missing: List[str], hint: str) -> None:
    """A :class:`LayoutError` listing the anomalous images without a mask, if there are any."""
    if missing:
        raise LayoutError(f"{len(missing)} anomalous image(s) have no mask: {listing(missing)}. {hint}")


@dataclass(frozen=True)
class ImageGroup:
    """One folder of images as a layout sees it.

    ``label`` is :data:`~anomaly_clip.data.records.NORMAL`, ``ANOMALOUS``, or None when each
    image's label is decided by its mask (:meth:`FolderLayout.label_of`). ``mask_dirs`` are
    searched in order for ``<image stem><suffix>.<ext>``; with ``masks_required`` an anomalous
    image without a mask is an error. A folder listed among its own ``mask_dirs`` holds images
    and masks side by side: files named ``<stem><non-empty mask suffix>`` are masks there.
    """

    split: str
    class_name: str
    folder: Path
    label: Optional[int]
    specie: str = ""
    mask_dirs: Tuple[Path, ...] = ()
    masks_required: bool = False


class MaskFinder:
    """Pairs images with mask files by name: ``<stem><suffix>`` with any image extension.

    One index per mask folder, built on first use. :meth:`check` then refuses masks named after
    more than one image (two image folders sharing a mask folder would otherwise share masks)
    and reports masks never paired (a naming mismatch shows up as missing masks *and* unused ones);
    in a folder holding images beside their masks, the images themselves are not unused masks.
    """

    def __init__(self, suffixes: Sequence[str]):
        self.suffixes = tuple(suffixes)
        self._index: Dict[Path, Dict[str, Path]] = {}
        self._owners: Dict[Path, List[Path]] = {}
        self._images: Set[Path] = set()

    def _folder_index(self, folder: Path) -> Dict[str, Path]:
        if folder not in self._index:
            index: Dict[str, Path] = {}
            for path in list_images(folder):
                key = path.stem.lower()
                if key in index:
                    logger.warning("Two masks named %s in %s; using %s", path.stem, folder, index[key].name)
                    continue
                index[key] = path
            self._index[folder] = index
        return self._index[folder]

    def is_mask_name(self, path: Path) -> bool:
        """Whether ``path`` is named like a mask (``<stem><non-empty suffix>``)."""
        stem = path.stem.lower()
        return any(suffix and stem.endswith(suffix.lower()) for suffix in self.suffixes)

    def find(self, image: Path, folders: Sequence[Path]) -> Optional[Path]:
        """The mask of ``image`` in the first of ``folders`` that has one, else None."""
        self._images.add(image)
        for folder in folders:
            index = self._folder_index(folder)
            for suffix in self.suffixes:
                found = index.get((image.stem + suffix).lower())
                if found is not None and found != image:
                    self._owners.setdefault(found, []).append(image)
                    return found
        return None

    def check(self, root: Path) -> None:
        """Raise :class:`LayoutError` for masks paired with several images; warn about unused masks."""
        shared = [f"{relative(mask, root)} <- {', '.join(relative(image, root) for image in images)}"
                  for mask, images in self._owners.items() if len(images) > 1]
        if shared:
            raise LayoutError(f"{len(shared)} mask file(s) are named after more than one image: {listing(shared)}. "
                              "Give each image folder its own mask folder, or rename the images")
        for folder, index in self._index.items():
            unused = sorted(p.name for p in index.values() if p not in self._owners and p not in self._images)
            if unused:
                logger.warning("%d mask file(s) in %s match no image: %s", len(unused), folder, listing(unused))


class Layout(ABC):
    """How one dataset arranges its files."""

    @property
    def has_masks(self) -> bool:
        """Whether anomalous images come with pixel masks."""
        return True

    def normal_hint(self) -> str:
        """Where this layout looks for normal images, for the warning about a class without any."""
        return ""

    @abstractmethod
    def matches(self, root: Path) -> bool:
        """Quick check that ``root`` looks like this layout."""

    @abstractmethod
    def scan(self, root: Path) -> Metadata:
        """Samples per split found under ``root`` (paths relative to ``root``).

        Raises :class:`LayoutError` when the tree cannot be read as this layout."""

    @abstractmethod
    def describe(self) -> str:
        """Expected tree, in one line, for error messages and documentation."""


class FolderLayout(Layout):
    """A layout whose images sit in folders; subclasses only say which folders (:meth:`groups`)."""

    mask_suffixes: Tuple[str, ...] = ("_mask",)

    @abstractmethod
    def groups(self, root: Path) -> Iterator[ImageGroup]:
        """Every folder of images under ``root``, in the order the metadata lists them."""

    def label_of(self, group: ImageGroup, mask: Optional[Path]) -> int:
        """Label of an image of ``group`` whose mask search gave ``mask``."""
        if group.label is None:
            raise TypeError(f"{type(self).__name__} yields groups without a label, so it must override label_of")
        return group.label

    def missing_mask_hint(self) -> str:
        """How masks are found, for the error listing anomalous images without one."""
        return f"Masks are matched by name: <image stem>{self.mask_suffixes[0]}.<ext>."

    def scan(self, root: Path) -> Metadata:
        root = Path(root)
        groups = list(self.groups(root))
        _refuse_images_in_mask_folders(groups)
        finder = MaskFinder(self.mask_suffixes)
        metadata: Metadata = {}
        missing: List[str] = []
        for group in groups:
            beside_masks = group.folder in group.mask_dirs
            for image in list_images(group.folder):
                if beside_masks and finder.is_mask_name(image):
                    continue
                mask = finder.find(image, group.mask_dirs) if group.label != NORMAL else None
                label = self.label_of(group, mask)
                if label == ANOMALOUS and mask is None and group.masks_required:
                    missing.append(relative(image, root))
                mask_path = relative(mask, root) if mask is not None and label == ANOMALOUS else None
                metadata.setdefault(group.split, []).append(
                    Sample(relative(image, root), label, group.class_name, mask_path, group.specie))
        raise_missing_masks(missing, self.missing_mask_hint())
        finder.check(root)
        return metadata


def _refuse_images_in_mask_folders(groups: Sequence[ImageGroup]) -> None:
    """A file under a mask folder is never an image: an image folder inside another group's mask
    folder is a :class:`LayoutError` (a folder holding its own masks beside its images is fine)."""
    mask_dirs = {folder for group in groups for folder in group.mask_dirs}
    for group in groups:
        for folder in mask_dirs:
            if folder in group.mask_dirs and folder == group.folder:
                continue
            if folder == group.folder or folder in group.folder.parents:
                raise LayoutError(f"{group.folder} is inside the mask folder {folder}, so its files are masks, "
                                  f"not images; keep images and masks in separate folders")


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
        """The first alternative that matches ``root``."""
        for layout in self.alternatives:
            if layout.matches(root):
                return layout
        raise LayoutError(f"{root} matches none of: {self.describe()}")

    def scan(self, root: Path) -> Metadata:
        return self.chosen(root).scan(root)
