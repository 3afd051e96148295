"""Pseudo-anomalies: defects painted on normal training images, with exact masks, on the fly.

Practitioners usually have good parts only. :class:`PseudoAnomalyDataset` turns such a dataset
into training data: each epoch a fraction of its normal images get one painted defect (the
synthetic generator's scratches, cracks, blobs, missing pieces and stains, plus a cut-paste of
a patch from another normal image of the same class) and become anomalous samples whose mask is
exactly the set of pixels the defect changed.

Painting happens on the image at the model's resolution, after photometric augmentation and
before normalisation and geometric augmentation, so a mask needs no resizing and moves with its
image. Every draw comes from a generator of ``(seed, epoch, index)``: a run is reproducible
whatever the worker count or order, and each epoch paints other images with other defects. The
training data therefore changes every epoch (``varies_by_epoch``), which rules out replaying
cached image features.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .augment import sample_seed
from .dataset import AnomalyDataset, AnomalyDatasetView
from .records import ANOMALOUS
from .synthetic import DEFECT_TYPES, DONOR_DEFECTS, Scene, add_defect

logger = logging.getLogger(__name__)

PSEUDO_DEFECT_TYPES = DEFECT_TYPES + DONOR_DEFECTS
_STREAM = 0x5EEDA40  # keeps painting draws apart from augmentation draws made with the same seed


def image_scene(image: np.ndarray, donor: Optional[np.ndarray] = None) -> Scene:
    """A real (S, S, 3) uint8 image as a scene for the painters: a defect may go anywhere (the
    object's outline is unknown), and a missing piece shows the median colour of the image's
    border (the backdrop of an object photograph, the mean tone of a texture)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"expected a square uint8 RGB image, got {image.dtype} of shape {image.shape}")
    if donor is not None and donor.shape != image.shape:
        raise ValueError(f"donor image of shape {donor.shape} does not match the image's {image.shape}")
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.broadcast_to(np.median(border, axis=0).astype(np.uint8), image.shape)
    return Scene(image, np.ones(image.shape[:2], bool), background, donor)


def paint_defect(image: np.ndarray, kind: str, rng: np.random.Generator,
                 donor: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """``(painted, mask)``: one defect of ``kind`` painted on a square uint8 RGB image; ``mask``
    is exactly where ``painted`` differs from ``image``. ``cutpaste`` copies from ``donor``."""
    if kind not in PSEUDO_DEFECT_TYPES:
        raise ValueError(f"unknown defect {kind!r}; known: {PSEUDO_DEFECT_TYPES}")
    return add_defect(image_scene(image, donor), kind, rng)


@dataclass(frozen=True)
class PseudoAnomalies:
    """How training data gets pseudo-anomalies: the fraction ``probability`` of normal images
    painted each epoch, the defect ``kinds`` drawn from uniformly, and the ``seed``."""

    probability: float
    kinds: Tuple[str, ...] = PSEUDO_DEFECT_TYPES
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"the pseudo-anomaly fraction must lie in [0, 1], got {self.probability}")
        unknown = [kind for kind in self.kinds if kind not in PSEUDO_DEFECT_TYPES]
        if unknown or not self.kinds:
            raise ValueError(f"pseudo-anomaly kinds must be a non-empty subset of {PSEUDO_DEFECT_TYPES}, "
                             f"got {list(self.kinds)}")
        object.__setattr__(self, "kinds", tuple(self.kinds))

    def apply(self, dataset: AnomalyDataset) -> Dataset:
        """``dataset`` with pseudo-anomalies (unchanged when ``probability`` is 0)."""
        return PseudoAnomalyDataset(dataset, self) if self.probability > 0 else dataset


def apply_pseudo_anomalies(dataset: AnomalyDataset, settings: Optional[PseudoAnomalies],
                           announce: bool = True) -> Dataset:
    """The one place every method's training data gets its pseudo-anomalies (None: none);
    ``announce`` logs what is painted (once per run: a second dataset of the same images passes False)."""
    if settings is None:
        return dataset
    painted = settings.apply(dataset)
    if announce and isinstance(painted, PseudoAnomalyDataset):
        painted.announce()
    return painted


def require_anomalies(dataset: Dataset, where: Any) -> None:
    """Refuse training data without a single anomalous image: the losses would see one class."""
    samples = getattr(dataset, "samples", None)
    if isinstance(dataset, PseudoAnomalyDataset) or not samples:
        return
    if not any(sample.is_anomalous for sample in samples):
        raise ValueError(f"the training data under {where} holds normal images only; --synthesize_anomalies P "
                         f"paints defects with exact masks on a fraction P of them (see 'Only normal images?' "
                         f"in the README)")


class PseudoAnomalyDataset(AnomalyDatasetView):
    """An :class:`~anomaly_clip.data.dataset.AnomalyDataset` whose normal images are painted with
    a defect with probability ``settings.probability``, drawn anew every epoch (see the module
    docstring). Items carry ``pseudo_anomaly`` (bool) besides the usual keys; real anomalous
    images pass through unchanged."""

    def __init__(self, dataset: AnomalyDataset, settings: PseudoAnomalies):
        super().__init__(dataset)
        self.settings = settings
        self.normals_by_class: Dict[str, List[int]] = defaultdict(list)
        for index, sample in enumerate(dataset.samples):
            if not sample.is_anomalous:
                self.normals_by_class[sample.class_name].append(index)
        if not self.normals_by_class:
            raise ValueError(f"no normal images under {dataset.root} to paint pseudo-anomalies on")
        unmasked = any(sample.is_anomalous for sample in dataset.samples) and not dataset.has_masks
        self.image_level_only = unmasked

    def announce(self) -> None:
        """Log what is painted, on how many images."""
        logger.info("Pseudo-anomalies: %.0f%% of %d normal images painted each epoch (%s)",
                    100 * self.settings.probability, sum(map(len, self.normals_by_class.values())),
                    ", ".join(self.settings.kinds))

    @property
    def has_masks(self) -> bool:
        """Painted masks are exact; real anomalous images keep the wrapped dataset's status."""
        return not self.image_level_only

    @property
    def varies_by_epoch(self) -> bool:
        return True

    def painting_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([_STREAM, sample_seed(self.settings.seed, self.epoch, index)])

    def defect_of(self, index: int) -> Optional[str]:
        """The defect painted on sample ``index`` this epoch, None when it is left as it is."""
        return self._plan(index, self.painting_rng(index))

    def _plan(self, index: int, rng: np.random.Generator) -> Optional[str]:
        if self.samples[index].is_anomalous or rng.random() >= self.settings.probability:
            return None
        return self.settings.kinds[int(rng.integers(len(self.settings.kinds)))]

    def _donor(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Another normal image of the same class (the image itself when it is the only one),
        at the model's size and without photometric augmentation."""
        candidates = [i for i in self.normals_by_class[self.samples[index].class_name] if i != index] or [index]
        chosen = candidates[int(rng.integers(len(candidates)))]
        return np.asarray(self.dataset.resized_image(chosen, photometric=False))

    def __getitem__(self, index: int) -> Dict[str, Any]:
        rng = self.painting_rng(index)
        kind = self._plan(index, rng)
        if kind is None:
            item = self.dataset[index]
        else:
            generator = self.dataset.augmentation_generator(index)
            image = np.asarray(self.dataset.resized_image(index, generator))
            donor = self._donor(index, rng) if kind in DONOR_DEFECTS else None
            painted, mask = paint_defect(image, kind, rng, donor)
            mask_tensor = torch.from_numpy(mask.astype(np.float32)).unsqueeze(0)
            item = self.dataset.make_item(index, Image.fromarray(painted), mask_tensor, ANOMALOUS, generator)
        item["pseudo_anomaly"] = torch.tensor(kind is not None)
        return item
