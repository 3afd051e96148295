"""Few-shot training subsets: ``k`` images per class, half normal and half anomalous (AA-CLIP)."""
from __future__ import annotations

import logging
import zlib
from typing import List, Sequence

import numpy as np

from .records import Sample, class_names

logger = logging.getLogger(__name__)


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
        rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
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
