"""Few-shot subsets: training subsets of ``k`` images per class, half normal and half anomalous
(AA-CLIP), and ``k`` normal reference images per class for inference."""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .layouts import list_folders, list_images
from .records import NORMAL, Sample, class_names

logger = logging.getLogger(__name__)


def _class_rng(seed: int, name: str) -> np.random.Generator:
    """A class's own generator, so its draw does not depend on which other classes are present."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def few_shot_subset(samples: Sequence[Sample], k: int, seed: int = 0, strict: bool = True) -> List[Sample]:
    """``k`` samples per class, ``k / 2`` normal and ``k / 2`` anomalous, drawn without replacement.

    Each class draws from its own generator (seed and class name), so a class's subset does not
    depend on which other classes are present; the result keeps the input order. A class with
    too few images of a label is an error, or with ``strict=False`` gives all it has (logged).
    """
    if k <= 0 or k % 2:
        raise ValueError(f"k must be a positive even number (1:1 normal:anomalous), got {k}")
    per_label = k // 2
    chosen = set()
    for name in class_names(samples):
        rng = _class_rng(seed, name)
        for label, kind in ((0, "normal"), (1, "anomalous")):
            pool = [i for i, s in enumerate(samples) if s.class_name == name and s.label == label]
            if len(pool) < per_label:
                message = f"class {name!r} has {len(pool)} {kind} images, {k}-shot needs {per_label}"
                if strict:
                    raise ValueError(message + " (strict=False takes all of them)")
                logger.warning("%s; taking all %d", message, len(pool))
                chosen.update(pool)
                continue
            chosen.update(pool[i] for i in rng.choice(len(pool), size=per_label, replace=False))
    return [sample for i, sample in enumerate(samples) if i in chosen]


def normal_references(samples: Sequence[Sample], k: int, seed: int = 0) -> List[Sample]:
    """``k`` normal samples per class, drawn without replacement (seeded per class); the result
    keeps the input order. A class with fewer than ``k`` normal images is an error."""
    if k <= 0:
        raise ValueError(f"the number of reference images per class must be positive, got {k}")
    chosen = set()
    pools = {name: [i for i, s in enumerate(samples) if s.class_name == name and not s.is_anomalous]
             for name in class_names(samples)}
    short = {name: len(pool) for name, pool in pools.items() if len(pool) < k}
    if short:
        shown = ", ".join(f"{name!r} {count}" for name, count in sorted(short.items()))
        raise ValueError(f"{k} normal references per class requested, but some classes have fewer normal images "
                         f"({shown}): ask for K <= {min(short.values())}, or give a folder of normal images")
    for name, pool in pools.items():
        chosen.update(pool[i] for i in _class_rng(seed, name).choice(len(pool), size=k, replace=False))
    return [sample for i, sample in enumerate(samples) if i in chosen]


def folder_references(folder: str | Path, class_name: Optional[str] = None) -> List[Sample]:
    """Normal reference images of a folder (absolute paths): one sub-folder of images per class,
    or images directly inside it, all of ``class_name``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"reference folder {folder} does not exist")
    images, subfolders = list_images(folder), [d for d in list_folders(folder) if list_images(d)]
    if images and subfolders:
        raise ValueError(f"{folder} holds images and class sub-folders; use one or the other")
    if images:
        if not class_name:
            raise ValueError(f"the reference images directly in {folder} need a class name (--class_name)")
        groups = [(class_name, images)]
    elif subfolders:
        if class_name:
            raise ValueError(f"{folder} has class sub-folders {[d.name for d in subfolders]}; a class name applies "
                             f"to a folder of images only")
        groups = [(d.name, list_images(d)) for d in subfolders]
    else:
        raise ValueError(f"no images in {folder} or in its sub-folders")
    return [Sample(str(path.resolve()), NORMAL, name, None, "good") for name, paths in groups for path in paths]
