"""Mosaic augmentation: an image replaced by a 2 x 2 mosaic of four images of its class.

APRIL-GAN's training (``dataset.py`` of ByChelsea/VAND-APRIL-GAN, ``aug_rate``) replaces, with
probability ``rate``, a training image by four images of the same class drawn at random (a
random defect type, ``good`` included, then a random image of it), pasted at their original
resolution into a canvas twice as wide and high (tile ``i`` at row ``i // 2``, column ``i % 2``),
with their masks likewise; the canvas then goes through the usual resize. The sample keeps its
own label. The reference draws from Python's global generator; here every draw comes from
``(seed, epoch, index)``, so a run is reproducible whatever the worker count, and each epoch
draws anew (``varies_by_epoch``: no image features to replay).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any, Dict, List

import numpy as np
from PIL import Image

from .augment import sample_seed
from .dataset import AnomalyDataset, AnomalyDatasetView, mask_to_tensor
from .imaging import read_binary_mask, read_rgb

logger = logging.getLogger(__name__)

NORMAL_GROUP = "good"
_STREAM = 0x40541C  # keeps mosaic draws apart from other draws made with the same seed


class MosaicDataset(AnomalyDatasetView):
    """An :class:`~anomaly_clip.data.dataset.AnomalyDataset` whose items are, with probability
    ``rate``, 2 x 2 mosaics of four images of the item's class (module docstring); items carry
    ``mosaic`` (bool) besides the usual keys."""

    def __init__(self, dataset: AnomalyDataset, rate: float, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the mosaic rate must lie in [0, 1], got {rate}")
        super().__init__(dataset)
        self.rate, self.seed = rate, seed
        self.groups: Dict[str, Dict[str, List[int]]] = defaultdict(lambda: defaultdict(list))
        for index, sample in enumerate(dataset.samples):
            group = (sample.specie_name or "anomalous") if sample.is_anomalous else NORMAL_GROUP
            self.groups[sample.class_name][group].append(index)
        logger.info("Mosaics: %.0f%% of %d training images replaced each epoch", 100 * rate, len(dataset))

    @property
    def varies_by_epoch(self) -> bool:
        return self.rate > 0 or self.dataset.varies_by_epoch

    def tiles(self, index: int) -> List[int]:
        """The four sample indices of sample ``index``'s mosaic this epoch; empty when it is left as it is."""
        rng = np.random.default_rng([_STREAM, sample_seed(self.seed, self.epoch, index)])
        if rng.random() >= self.rate:
            return []
        groups = self.groups[self.samples[index].class_name]
        names = sorted(groups)
        chosen = []
        for _ in range(4):
            members = groups[names[int(rng.integers(len(names)))]]
            chosen.append(members[int(rng.integers(len(members)))])
        return chosen

    def _full_mask(self, index: int, size: tuple) -> np.ndarray:
        path = self.dataset.mask_path(index)
        if path is None:
            return np.zeros((size[1], size[0]), dtype=bool)
        return read_binary_mask(path)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        tiles = self.tiles(index)
        if not tiles:
            item = self.dataset[index]
            item["mosaic"] = False
            return item
        images = [read_rgb(self.dataset.image_path(i), self.dataset.high_bit_depth) for i in tiles]
        width, height = images[0].size
        canvas = Image.new("RGB", (2 * width, 2 * height))
        mask = Image.new("L", (2 * width, 2 * height))
        for position, (tile, image) in enumerate(zip(tiles, images)):
            corner = ((position % 2) * width, (position // 2) * height)
            canvas.paste(image, corner)
            mask.paste(Image.fromarray(self._full_mask(tile, image.size).astype(np.uint8) * 255), corner)
        size = self.dataset.image_size
        mask_tensor = mask_to_tensor(np.asarray(mask) > 127, size, self.dataset.mask_interpolation)
        generator = self.dataset.augmentation_generator(index)
        item = self.dataset.make_item(index, self.dataset.transform.resize(canvas), mask_tensor,
                                      self.samples[index].label, generator)
        item["mosaic"] = True
        return item
