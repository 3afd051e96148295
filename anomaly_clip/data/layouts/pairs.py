"""Layouts where masks decide more than pixels: segmentation sets whose images are all
anomalous (:class:`ImageMaskFolders`) and sets whose images are anomalous exactly when they
have a mask (:class:`MaskPresence`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Tuple

from ..records import ANOMALOUS, NORMAL
from .base import FolderLayout, ImageGroup, list_folders


@dataclass(frozen=True)
class ImageMaskFolders(FolderLayout):
    """Anomalous images in one folder, their masks (same stem + suffix) in another; one class.

    ``splits`` maps a split to candidate ``(image folder, mask folder)`` pairs, the first whose
    image folder exists wins; an image folder of ``"*"`` takes every folder except the mask one
    (each then a defect type named after its folder).
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

    def groups(self, root: Path) -> Iterator[ImageGroup]:
        for split in self.splits:
            pair = self._pair(root, split)
            if pair is None:
                continue
            folders, mask_dir, wildcard = pair
            for folder in folders:
                yield ImageGroup(split, self.class_name, folder, ANOMALOUS, folder.name if wildcard else "",
                                 (mask_dir,), True)


def _has_foreground(mask: Path) -> bool:
    from ..imaging import read_binary_mask

    return bool(read_binary_mask(mask).any())


@dataclass(frozen=True)
class MaskPresence(FolderLayout):
    """Images of one folder per split; an image is anomalous when its mask file exists
    (``from_content`` False) or when that mask has defect pixels (``from_content`` True).

    ``splits`` maps a split to its image folder template (``{cls}`` a discovered class folder,
    ``{group}`` every folder of the root, both as in :class:`~.folders.DefectFolders`);
    ``mask_folder`` is relative to the image folder ("" for the same folder, where files named
    ``<stem><mask suffix>`` are then masks, not images).
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

    def matches(self, root: Path) -> bool:
        return any(self._folders(root, template) for template in self.splits.values())

    def groups(self, root: Path) -> Iterator[ImageGroup]:
        for split, template in self.splits.items():
            for name, folder in self._folders(root, template):
                specie = name if self.class_name is not None and "{group}" in template else ""
                mask_dir = folder / self.mask_folder if self.mask_folder else folder
                yield ImageGroup(split, self.class_name or name, folder, None, specie, (mask_dir,))

    def label_of(self, group: ImageGroup, mask: Optional[Path]) -> int:
        if mask is None or (self.from_content and not _has_foreground(mask)):
            return NORMAL
        return ANOMALOUS
