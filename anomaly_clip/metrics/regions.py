"""Ground-truth regions for PRO: the 8-connected components of every image's mask.

Regions are labelled once per class and kept sparse (positions and region ids of the
anomalous pixels only), so they cost memory in proportion to the defect area, not the image
area. Labelling runs on the host with OpenCV's connected components (8-connectivity: the same
regions as ``skimage.measure.label`` and ``scipy.ndimage.label`` with full connectivity, which
the AnomalyCLIP and MVTec evaluation code use), one call per image that has a defect; the
result is moved to the maps' device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import cv2
import numpy as np
import torch
from torch import Tensor

from ._inputs import TensorOrChunks, as_binary, as_chunks, as_maps, as_masks, finite_range
from .ordering import DEFAULT_BLOCK_SIZE, flat_pieces
from .ranking import PositiveGroups, positive_groups


@dataclass(frozen=True)
class Regions:
    """Anomalous pixels of a stack of masks and the connected region each belongs to."""

    pixel_index: Tensor
    """int64 [A]: ascending flat positions (over all images, row-major) of the anomalous pixels."""
    region: Tensor
    """int64 [A]: region id in ``[0, num_regions)`` of each anomalous pixel."""
    area: Tensor
    """int64 [R]: pixel count of each region."""
    num_pixels: int

    @property
    def num_regions(self) -> int:
        return int(self.area.numel())

    @property
    def num_anomalous(self) -> int:
        return int(self.pixel_index.numel())

    @property
    def num_normal(self) -> int:
        return self.num_pixels - self.num_anomalous

    def pixel_weights(self) -> Tensor:
        """float64 [A]: ``1 / area`` of each anomalous pixel's region.

        A region's covered fraction is the sum of these weights over its covered pixels, so
        their running sum divided by the region count is the PRO value.
        """
        return (1.0 / self.area.to(torch.float64))[self.region]


@dataclass
class LabelledMaps:
    """One class's anomaly maps with their labelled regions; the pixel ranking is built once, on demand."""

    maps: List[Tensor]
    regions: Regions
    score_range: Tuple[float, float]
    """Minimum and maximum score over all maps."""
    block_size: int = DEFAULT_BLOCK_SIZE
    _groups: Optional[PositiveGroups] = field(default=None, repr=False)

    @classmethod
    def from_tensors(cls, maps: TensorOrChunks, masks: TensorOrChunks,
                     block_size: int = DEFAULT_BLOCK_SIZE) -> "LabelledMaps":
        """Check ``[N, H, W]`` maps (finite) and binary masks, label the masks' regions."""
        maps = as_maps(maps)
        masks = as_masks(masks, maps)
        score_range = finite_range(maps, "maps")
        return cls(maps, label_regions(masks, device=maps[0].device), score_range, block_size)

    @property
    def applicable(self) -> bool:
        """Pixel metrics need both anomalous and normal pixels."""
        return self.regions.num_anomalous > 0 and self.regions.num_normal > 0

    def pieces(self) -> Iterator[Tuple[Tensor, Tensor, Tensor]]:
        """``(scores, anomalous positions, their weights)`` per flat piece; positions are piece-local."""
        index, weights = self.regions.pixel_index, self.regions.pixel_weights()
        offset = 0
        for piece in flat_pieces(self.maps):
            first, last = torch.searchsorted(index, index.new_tensor([offset, offset + piece.numel()])).tolist()
            yield piece, index[first:last] - offset, weights[first:last]
            offset += piece.numel()

    def groups(self) -> PositiveGroups:
        """Anomalous pixels grouped by distinct score, with the counts of pixels around each group."""
        if self._groups is None:
            self._groups = positive_groups(self.maps, self.regions.pixel_index, self.regions.pixel_weights(),
                                           self.block_size)
        return self._groups


def label_regions(masks: TensorOrChunks, device: Optional[torch.device] = None) -> Regions:
    """Label the 8-connected components of each mask of binary ``[N, H, W]`` masks (or a list of such chunks)."""
    chunks = [as_binary(chunk, "masks") for chunk in as_chunks(masks, "masks")]
    if any(chunk.dim() != 3 for chunk in chunks):
        raise ValueError(f"masks must be [N, H, W], got {[tuple(c.shape) for c in chunks]}")
    positions: List[np.ndarray] = []
    region_ids: List[np.ndarray] = []
    areas: List[np.ndarray] = []
    offset = num_regions = 0
    for chunk in chunks:
        stack = np.ascontiguousarray(chunk.detach().to("cpu", torch.bool).numpy())
        flat = stack.reshape(len(stack), -1)
        for image in np.flatnonzero(flat.any(axis=1)):
            count, labels = cv2.connectedComponents(stack[image].view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
            inside = np.flatnonzero(flat[image])
            ids = labels.reshape(-1)[inside].astype(np.int64)
            positions.append(offset + int(image) * flat.shape[1] + inside)
            region_ids.append(ids - 1 + num_regions)
            areas.append(np.bincount(ids, minlength=count)[1:])
            num_regions += count - 1
        offset += stack.size
    return Regions(_joined(positions, device), _joined(region_ids, device), _joined(areas, device), offset)


def _joined(parts: List[np.ndarray], device: Optional[torch.device]) -> Tensor:
    array = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(array.astype(np.int64, copy=False)).to(device)
