"""Layouts with one folder per state (normal, or a defect type): published sets in the MVTec AD
arrangement (:class:`DefectFolders`), users' own class folders (:class:`CustomFolders`) and a
plain pair of normal/anomalous folders (:class:`PlainFolders`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from ..records import ANOMALOUS, NORMAL, Metadata
from .base import (
    NORMAL_STATE_NAMES,
    SPLIT_FOLDERS,
    FolderLayout,
    ImageGroup,
    LayoutError,
    is_mask_folder,
    is_normal_state,
    list_folders,
    list_images,
    listing,
    split_of,
)

logger = logging.getLogger(__name__)

Folders = Union[str, Sequence[str], None]


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part and part.strip("/"))


@dataclass(frozen=True)
class DefectFolders(FolderLayout):
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

    def missing_mask_hint(self) -> str:
        return f"Expected masks at {self.masks[0] if self.masks else '-'}/<image stem>{self.mask_suffixes[0]}.<ext>."

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
            if self._has_states(base):
                return base
        return root

    def _has_states(self, base: Path) -> bool:
        return any(self._state_dirs(base, cls, folder)
                   for cls in self._classes(base) for folder in self.splits.values())

    def _classes(self, base: Path) -> List[Optional[str]]:
        if self.class_name is not None:
            return [None]
        return [folder.name for folder in list_folders(base)]

    def _state_dirs(self, base: Path, cls: Optional[str], split_folder: str) -> List[Tuple[str, Path]]:
        values = {"cls": cls or "", "split": split_folder}
        head = self.images[0].partition("{state}")[0]
        found = []
        for state_dir in list_folders(base / _join(head.format(**values))):
            if self._state_kind(state_dir.name) is None:
                continue
            for template in self.images:
                tail = template.partition("{state}")[2].format(**values).strip("/")
                candidate = state_dir / tail if tail else state_dir
                if candidate.is_dir():
                    found.append((state_dir.name, candidate))
                    break
        return sorted(found, key=lambda item: (self._state_kind(item[0]) != NORMAL, item[0]))

    def _mask_dir(self, base: Path, cls: Optional[str], split_folder: str, state: str) -> Path:
        values = {"cls": cls or "", "split": split_folder, "state": state}
        candidates = [base / _join(template.format(**values)) for template in self.masks]
        return next((c for c in candidates if c.is_dir()), candidates[0])

    def matches(self, root: Path) -> bool:
        return self._has_states(self._base(root))

    def groups(self, root: Path) -> Iterator[ImageGroup]:
        base = self._base(root)
        for split, split_folder in self.splits.items():
            for cls in self._classes(base):
                class_name = self.class_name if cls is None else cls
                for state, folder in self._state_dirs(base, cls, split_folder):
                    label = self._state_kind(state)
                    if label == ANOMALOUS and self.masks:
                        mask_dir = self._mask_dir(base, cls, split_folder, state)
                        yield ImageGroup(split, class_name, folder, label, state, (mask_dir,),
                                         self.masks_required or mask_dir.is_dir())
                    else:
                        yield ImageGroup(split, class_name, folder, label, state)


def _warn_unlisted_images(folder: Path, where: str) -> None:
    loose = list_images(folder)
    if loose:
        logger.warning("%d image(s) directly in %s are not listed (%s): %s", len(loose), folder, where,
                       listing([p.name for p in loose]))


@dataclass(frozen=True)
class CustomFolders(FolderLayout):
    """Users' own data: ``<root>/<class>/<state>/`` or ``<root>/<class>/<split>/<state>/``.

    A state folder named like :data:`~.base.NORMAL_STATE_NAMES` (``good``, ``normal``, ``ok``,
    ``nominal``, ...; any case, ``-``/``_``/spaces ignored) holds normal images, every other one
    anomalous images of that defect type. Masks are optional: ``<class>/<mask folder>/<state>/``,
    also inside a split folder, with a mask folder named like :data:`~.base.MASK_FOLDER_NAMES`
    (``ground_truth``, ``masks``, ...), files ``<stem>_mask.<ext>`` or ``<stem>.<ext>``. Once a
    defect folder has a mask folder, each of its images needs a mask.

    A root that itself holds split, mask or normal-state folders is one class folder (MVTec's
    ``bottle/`` with ``train/``, ``test/`` and ``ground_truth/``), named after the root; a class
    folder mixing split folders with state folders is a :class:`LayoutError`.
    """

    mask_suffixes: Tuple[str, ...] = ("_mask", "", "_label", "_gt")

    def describe(self) -> str:
        return ("<class>/[train|test/]<good|defect>/ images (or one class folder as the root), optional masks in "
                "<class>/[<split>/]ground_truth/<defect>/<stem>_mask.png")

    def normal_hint(self) -> str:
        return f"normal images are read from folders named {', '.join(NORMAL_STATE_NAMES)} (any case)"

    def missing_mask_hint(self) -> str:
        return "A defect folder with a mask folder needs a mask for each image (<stem>.<ext> or <stem>_mask.<ext>)."

    def matches(self, root: Path) -> bool:
        return bool(list_folders(root))

    def class_folders(self, root: Path) -> List[Tuple[str, Path]]:
        """(class name, class folder) pairs: the root's sub-folders, or the root itself when it
        holds split, mask or normal-state folders (then named after the root folder)."""
        folders = list_folders(root)
        telling = [f.name for f in folders if split_of(f.name) or is_mask_folder(f.name) or is_normal_state(f.name)]
        if telling:
            name = root.resolve().name or "object"
            logger.info("%s holds %s, so it is read as one class folder, class %r (rename it with a class name)",
                        root, listing(telling), name)
            return [(name, root)]
        _warn_unlisted_images(root, "images go into <class>/<state>/ folders")
        return [(folder.name, folder) for folder in folders]

    def groups(self, root: Path) -> Iterator[ImageGroup]:
        for name, class_dir in self.class_folders(root):
            yield from self._class_groups(name, class_dir)

    def _class_groups(self, name: str, class_dir: Path) -> Iterator[ImageGroup]:
        children = list_folders(class_dir)
        class_masks = [f for f in children if is_mask_folder(f.name)]
        order = list(dict.fromkeys(SPLIT_FOLDERS.values()))
        splits = sorted(((split_of(f.name), f) for f in children if split_of(f.name)),
                        key=lambda item: (order.index(item[0]), item[1].name))
        states = [f for f in children if not split_of(f.name) and not is_mask_folder(f.name)]
        if splits and states:
            raise LayoutError(
                f"{class_dir} mixes split folders ({listing([f.name for _, f in splits])}) with state folders "
                f"({listing([f.name for f in states])}); move each state folder into a split folder (e.g. "
                f"{class_dir / splits[0][1].name / states[0].name}) or drop the split folders")
        where = "images go into a normal folder such as good/ or a defect folder"
        if splits:
            _warn_unlisted_images(class_dir, where)
        for split, container in splits or [("test", class_dir)]:
            split_masks = [f for f in list_folders(container) if is_mask_folder(f.name)] if splits else []
            _warn_unlisted_images(container, where)
            for state in sorted((f for f in list_folders(container) if not is_mask_folder(f.name)),
                                key=lambda f: (not is_normal_state(f.name), f.name)):
                if is_normal_state(state.name):
                    yield ImageGroup(split, name, state, NORMAL, state.name)
                    continue
                candidates = [folder / state.name for folder in class_masks + split_masks]
                mask_dir = next((c for c in candidates if c.is_dir()), None)
                yield ImageGroup(split, name, state, ANOMALOUS, state.name,
                                 (mask_dir,) if mask_dir else (), mask_dir is not None)

    def scan(self, root: Path) -> Metadata:
        metadata = super().scan(root)
        unmasked = sorted({s.class_name for samples in metadata.values() for s in samples
                           if s.is_anomalous and not s.mask_path})
        if unmasked and any(s.mask_path for samples in metadata.values() for s in samples):
            logger.warning("Classes %s have anomalous images without masks while others have masks; "
                           "load them as image-level only or add their masks", unmasked)
        return metadata


def folder_tuple(folders: Folders) -> Tuple[str, ...]:
    """A folder option given once (a string), several times (a sequence) or not at all (None)."""
    if folders is None:
        return ()
    return (folders,) if isinstance(folders, str) else tuple(folders)


@dataclass(frozen=True)
class PlainFolders(FolderLayout):
    """Folders of normal images and folders of anomalous ones (paths relative to the root), and
    optionally mask folders: one for every anomalous folder, or one per anomalous folder in the
    same order. Each anomalous folder is a defect type named after it."""

    normal_dirs: Tuple[str, ...] = ()
    anomalous_dirs: Tuple[str, ...] = ()
    mask_dirs: Tuple[str, ...] = ()
    class_name: str = "object"
    split: str = "test"
    mask_suffixes: Tuple[str, ...] = ("", "_mask")

    @property
    def has_masks(self) -> bool:
        return bool(self.mask_dirs)

    def with_folders(self, normal_dirs: Folders = None, anomalous_dirs: Folders = None, mask_dirs: Folders = None,
                     split: Optional[str] = None) -> "PlainFolders":
        """A copy reading the given folders (each a folder, a sequence of folders, or None)."""
        return replace(self, normal_dirs=folder_tuple(normal_dirs), anomalous_dirs=folder_tuple(anomalous_dirs),
                       mask_dirs=folder_tuple(mask_dirs), split=split or self.split)

    def describe(self) -> str:
        return ("--normal-dir DIR and/or --anomalous-dir DIR, each repeatable (optional --mask-dir DIR: one for "
                "all anomalous folders or one per --anomalous-dir), relative to the root")

    def normal_hint(self) -> str:
        return "normal images come from --normal-dir"

    def missing_mask_hint(self) -> str:
        return f"Masks in {listing(list(self.mask_dirs))} are matched by name: <stem>.<ext> or <stem>_mask.<ext>."

    def matches(self, root: Path) -> bool:
        """Folders named on the command line always match: :meth:`groups` names any that is missing."""
        return bool(self.normal_dirs or self.anomalous_dirs)

    def groups(self, root: Path) -> Iterator[ImageGroup]:
        if not self.normal_dirs and not self.anomalous_dirs:
            raise LayoutError("plain folders need --normal-dir and/or --anomalous-dir")
        for option, folders in (("normal", self.normal_dirs), ("anomalous", self.anomalous_dirs),
                                ("mask", self.mask_dirs)):
            for folder in folders:
                if not (root / folder).is_dir():
                    raise LayoutError(f"{option} folder {root / folder} does not exist")
        image_dirs = [(root / folder).resolve() for folder in self.normal_dirs + self.anomalous_dirs]
        twice = sorted({str(folder) for folder in image_dirs if image_dirs.count(folder) > 1})
        if twice:
            raise LayoutError(f"folder(s) {listing(twice)} given more than once as --normal-dir/--anomalous-dir")
        if len(self.mask_dirs) not in (0, 1, len(self.anomalous_dirs)):
            raise LayoutError(f"{len(self.mask_dirs)} --mask-dir for {len(self.anomalous_dirs)} --anomalous-dir: "
                              "give one mask folder for all anomalous folders, or one per anomalous folder in the "
                              "same order")
        for folder in self.normal_dirs:
            yield ImageGroup(self.split, self.class_name, root / folder, NORMAL, "good")
        for index, folder in enumerate(self.anomalous_dirs):
            masks = self.mask_dirs[index if len(self.mask_dirs) > 1 else 0:][:1]
            yield ImageGroup(self.split, self.class_name, root / folder, ANOMALOUS, Path(folder).name,
                             tuple(root / mask for mask in masks), bool(masks))
