"""Few-shot normal references: a frozen memory bank of patch features of a few good images.

Zero-shot scoring ignores the handful of good images most users have. Here, once per run, the
detector's own patch features of ``K`` normal images per class are stored per class and per
layer (the layers its maps are made from). A test patch then scores its nearest-neighbour cosine
distance to the bank of its class at each layer,

    d(patch, layer) = 1 - max over bank rows r of cos(patch, r),

which is 0 for a patch seen among the references and grows as the patch looks less like any of
them. The per-layer distance grids become a reference map through the method's own map
smoothing (:meth:`~anomaly_clip.engine.detector.AnomalyDetector.patch_maps`), and are fused with
the text-based prediction with weight ``w``:

    map   = (1 - w) * text_map   + w * reference_map
    score = (1 - w) * text_score + w * max(reference_map)

``w = 0`` is the method as published, ``w = 1`` scores by the references alone. The two terms
have the method's scales (see the README's "A few normal images per product").

The similarity matmul runs on the device in blocks of at most ``max_elements`` entries, so a
64-shot bank at 518 px (64 x 1369 patches per layer and class) never materialises the full
query-by-bank matrix; a bank too large for the GPU stays in host memory and streams to it.
"""
from __future__ import annotations

import math
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..data.dataset import AnomalyDataset
from ..data.fewshot import folder_references, normal_references
from ..data.formats import load_samples
from ..data.records import Sample, class_names as ordered_class_names
from ..files import read_torch_file
from .checkpoint import atomic_save
from .detector import AnomalyDetector, PatchFeatures, Prediction
from .feature_cache import choose_cache_mode
from .inference import iterate_batches

logger = logging.getLogger(__name__)

DEFAULT_MAX_ELEMENTS = 1 << 24  # one similarity block: 16 Mi entries, 64 MiB in float32
BANK_FORMAT = "anomaly_clip.memory_bank"
_IDENTITY_BACKBONE_FIELDS = ("model_name", "pretrained", "weights_path", "random_init", "activation", "image_size",
                             "pos_embed_interpolation", "random_seed")


def similarity_block(queries: int, bank: int, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Tuple[int, int]:
    """(query rows, bank rows) of one block of the query-by-bank similarity matrix: as many bank
    rows as fit next to all queries, and never more than ``max_elements`` entries in all."""
    if min(queries, bank) < 1 or max_elements < 1:
        raise ValueError(f"need positive sizes, got {queries} queries, {bank} bank rows, max {max_elements}")
    bank_rows = min(bank, max(1, max_elements // min(queries, max_elements)))
    query_rows = min(queries, max(1, max_elements // bank_rows))
    return query_rows, bank_rows


def nearest_distances(queries: torch.Tensor, bank: torch.Tensor,
                      max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """``1 - max cos`` of each unit row of ``queries`` (Q, E) to the unit rows of ``bank`` (M, E),
    in float32 blocks of :func:`similarity_block` on the queries' device (a host bank streams)."""
    query_rows, bank_rows = similarity_block(queries.shape[0], bank.shape[0], max_elements)
    best = torch.empty(queries.shape[0], device=queries.device, dtype=torch.float32)
    with torch.autocast(queries.device.type, enabled=False):
        for query_start in range(0, queries.shape[0], query_rows):
            block_queries = queries[query_start:query_start + query_rows].float()
            block_best = torch.full((block_queries.shape[0],), -1.0, device=queries.device)
            for bank_start in range(0, bank.shape[0], bank_rows):
                rows = bank[bank_start:bank_start + bank_rows].to(queries.device, torch.float32, non_blocking=True)
                block_best = torch.maximum(block_best, (block_queries @ rows.T).amax(dim=1))
            best[query_start:query_start + query_rows] = block_best
    return (1 - best).clamp_(0.0, 2.0)


def fuse_with_references(prediction: Prediction, reference_maps: torch.Tensor, weight: float) -> Prediction:
    """``(1 - w) * text + w * reference`` for maps, and for scores with the reference map's maximum."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"the reference weight must lie in [0, 1], got {weight}")
    reference_maps = reference_maps.float()
    maps = (1 - weight) * prediction.maps.float() + weight * reference_maps
    scores = (1 - weight) * prediction.scores.float() + weight * reference_maps.flatten(1).amax(dim=1)
    return Prediction(scores=scores, maps=maps)


def detector_identity(detector: AnomalyDetector) -> Dict[str, Any]:
    """What a bank's features depend on: the method and its settings, the backbone, and a hash of
    the learnt weights (a bank belongs to the checkpoint it was built with)."""
    digest = hashlib.sha1()
    for name, value in sorted(detector.trainable_state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    backbone = detector.backbone.config.to_dict()
    return {
        "method": detector.method_name,
        "method_config": detector.config.to_dict(),
        "backbone": {name: backbone[name] for name in _IDENTITY_BACKBONE_FIELDS},
        "weights_sha1": digest.hexdigest(),
    }


@dataclass
class MemoryBank:
    """Unit patch features of normal reference images: ``features[class][layer]`` is (M, E) with
    M = references x patches. Built once (:meth:`build`), then only read."""

    features: Dict[str, Dict[int, torch.Tensor]]
    sources: Dict[str, List[str]]
    identity: Dict[str, Any]
    max_elements: int = DEFAULT_MAX_ELEMENTS
    patches_per_image: int = 0
    _layers: Tuple[int, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a memory bank needs reference features of at least one class")
        layer_sets = {tuple(sorted(layers)) for layers in self.features.values()}
        if len(layer_sets) != 1:
            raise ValueError(f"every class of a memory bank needs the same layers, got {sorted(layer_sets)}")
        self._layers = layer_sets.pop()

    @property
    def class_names(self) -> List[str]:
        return list(self.features)

    @property
    def layers(self) -> Tuple[int, ...]:
        return self._layers

    @property
    def storage_device(self) -> torch.device:
        return next(iter(next(iter(self.features.values())).values())).device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layers in self.features.values() for t in layers.values())

    @classmethod
    def build(cls, detector: AnomalyDetector, samples: Sequence[Sample], root: str | os.PathLike = ".",
              batch_size: int = 8, num_workers: int = 0, precision: str = "auto",
              max_elements: int = DEFAULT_MAX_ELEMENTS) -> "MemoryBank":
        """Compute the detector's patch features of the reference ``samples`` (normal images, any
        number per class) once, in batches; the bank stays on the detector's device when it fits
        there comfortably, in host memory otherwise."""
        if not samples:
            raise ValueError("no reference images for the memory bank")
        anomalous = [s.image_path for s in samples if s.is_anomalous]
        if anomalous:
            raise ValueError(f"reference images must be normal; anomalous: {anomalous[:5]}")
        device = detector.device
        dataset = AnomalyDataset(samples, root, image_size=detector.image_size, image_level_only=True)
        collected: Dict[int, List[torch.Tensor]] = {}
        for output in iterate_batches(detector, dataset, batch_size=batch_size, num_workers=num_workers,
                                      precision=precision, reference_features_only=True):
            for layer, value in output.patch_features.items():
                collected.setdefault(layer, []).append(F.normalize(value.float(), dim=-1).cpu())
        stacked = {layer: torch.cat(values) for layer, values in collected.items()}
        first = next(iter(stacked.values()))
        owners = [s.class_name for s in samples]
        per_class: Dict[str, Dict[int, torch.Tensor]] = {}
        for name in ordered_class_names(samples):
            rows = torch.tensor([i for i, owner in enumerate(owners) if owner == name])
            per_class[name] = {layer: value[rows].reshape(-1, value.shape[-1]) for layer, value in stacked.items()}
        total = sum(value.numel() * 4 for value in stacked.values())
        if choose_cache_mode("auto", total, 1, device) == "device":
            per_class = {name: {layer: t.to(device) for layer, t in layers.items()} for name, layers in per_class.items()}
        sources = {name: [str(dataset.image_path(i)) for i, owner in enumerate(owners) if owner == name]
                   for name in per_class}
        bank = cls(per_class, sources, detector_identity(detector), max_elements, patches_per_image=first.shape[1])
        logger.info("Memory bank of %s normal references (%d patches per image, layers %s): %.1f MiB on %s",
                    ", ".join(f"{len(paths)} {name}" for name, paths in sources.items()), bank.patches_per_image,
                    list(bank.layers), bank.nbytes / 2 ** 20, bank.storage_device)
        return bank

    def distances(self, patches: PatchFeatures, class_names: Sequence[str]) -> torch.Tensor:
        """(B, L, N) nearest-neighbour cosine distances of each image's patches to the bank of
        its class, one row per bank layer."""
        if tuple(sorted(patches)) != self.layers:
            raise ValueError(f"patch features of layers {sorted(patches)} do not match the bank's {list(self.layers)}")
        missing = sorted(set(class_names) - set(self.features))
        if missing:
            raise ValueError(f"no reference images for classes {missing}; the bank has {self.class_names}")
        first = patches[self.layers[0]]
        batch, count, _ = first.shape
        result = torch.empty(batch, len(self.layers), count, device=first.device)
        for name in dict.fromkeys(class_names):
            rows = torch.tensor([i for i, owner in enumerate(class_names) if owner == name], device=first.device)
            for position, layer in enumerate(self.layers):
                queries = F.normalize(patches[layer][rows].float(), dim=-1).reshape(-1, first.shape[-1])
                nearest = nearest_distances(queries, self.features[name][layer], self.max_elements)
                result[rows, position] = nearest.view(len(rows), count)
        return result

    def anomaly_maps(self, detector: AnomalyDetector, patches: PatchFeatures, class_names: Sequence[str],
                     size: int) -> torch.Tensor:
        """(B, size, size) reference maps: distances smoothed the way the detector smooths its maps."""
        distances = self.distances(patches, class_names)
        side = math.isqrt(int(distances.shape[-1]))
        if side * side != distances.shape[-1]:
            raise ValueError(f"{distances.shape[-1]} patches do not form a square grid")
        return detector.patch_maps(distances.view(*distances.shape[:2], side, side), size)

    def resolve_class_names(self, class_names: Optional[Sequence[str]], batch: int) -> List[str]:
        """The batch's class names; without any, the bank's single class."""
        if class_names is not None:
            return list(class_names)
        if len(self.features) != 1:
            raise ValueError(f"the memory bank holds several classes {self.class_names}; name each image's class")
        return self.class_names * batch

    # ---- persistence -----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to use the bank again, on the CPU (e.g. inside a calibration file)."""
        return {
            "format": BANK_FORMAT,
            "features": {name: {layer: t.cpu() for layer, t in layers.items()} for name, layers in self.features.items()},
            "sources": self.sources,
            "identity": self.identity,
            "patches_per_image": self.patches_per_image,
        }

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any], detector: AnomalyDetector,
                        max_elements: int = DEFAULT_MAX_ELEMENTS) -> "MemoryBank":
        """A saved bank for ``detector``: refused when it was built with other weights or settings."""
        if state.get("format") != BANK_FORMAT:
            raise ValueError("not a memory bank (no anomaly_clip.memory_bank format marker)")
        expected = detector_identity(detector)
        differing = sorted(key for key in expected if state["identity"].get(key) != expected[key])
        if differing:
            raise ValueError(f"the memory bank was built with another {' and '.join(differing)}; "
                             f"rebuild it for this checkpoint (--reference_images K or DIR)")
        features = state["features"]
        total = sum(t.numel() * t.element_size() for layers in features.values() for t in layers.values())
        if choose_cache_mode("auto", total, 1, detector.device) == "device":
            features = {name: {layer: t.to(detector.device) for layer, t in layers.items()}
                        for name, layers in features.items()}
        return cls(features, state["sources"], state["identity"], max_elements, state["patches_per_image"])

    def save(self, path: str | os.PathLike) -> Path:
        written = atomic_save(self.state_dict(), path)
        logger.info("Saved the memory bank to %s", written)
        return written

    @classmethod
    def load(cls, path: str | os.PathLike, detector: AnomalyDetector,
             max_elements: int = DEFAULT_MAX_ELEMENTS) -> "MemoryBank":
        state = read_torch_file(path, "memory bank")
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a memory bank")
        return cls.from_state_dict(state, detector, max_elements)


def predict_with_references(detector: AnomalyDetector, images: torch.Tensor, class_names: Optional[Sequence[str]],
                            bank: MemoryBank, weight: float) -> Prediction:
    """The detector's prediction fused with its reference maps (module docstring), from one
    backbone pass: the rule evaluation uses, for any caller (``predict``, demos).

    A method that owns its few-shot association (``associates_references``: WinCLIP+, APRIL-GAN's
    memory) is handed the bank's features with ``set_references`` (a constant-time call) and
    scores with them by its own rule instead; they stay set on the detector afterwards (its
    class-level score rule reads them).
    """
    names = bank.resolve_class_names(class_names, images.shape[0])
    if detector.associates_references:
        detector.set_references(bank.features, weight)
        return detector(images, names)
    prediction, patches = detector.forward_with_patch_features(images, class_names)
    return fuse_with_references(prediction, bank.anomaly_maps(detector, patches, names, images.shape[-1]), weight)


def reference_count(source: str | int) -> Optional[int]:
    """The K of a ``--reference_images`` value that is a number of normal references per class
    (ASCII digits, K >= 1), None for a folder or bank file. A number that is not a positive integer
    (``-1``, ``0``, ``2.5``, `` 2``, ``²``) is a :class:`ValueError`; before, it was reported as a
    missing folder, or as ``int()``'s own error."""
    text = str(source)
    if text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    try:
        float(text)
        numeric = True
    except ValueError:
        numeric = text.strip().isnumeric()
    if numeric and not Path(text).exists():
        raise ValueError(f"--reference_images {text!r}: K must be a positive integer, or a folder of normal images "
                         "or a saved bank file")
    return None


def memory_bank(detector: AnomalyDetector, source: str | int | os.PathLike, data_path: Optional[str] = None,
                class_name: Optional[str] = None, split: str = "train", seed: int = 0, batch_size: int = 8,
                num_workers: int = 0, precision: str = "auto") -> MemoryBank:
    """The frozen memory bank of a source of normal references, built once (or loaded):

    * ``K`` (a number): K normal images per class from ``split`` of the dataset at ``data_path``,
      drawn with ``seed``;
    * a folder of normal images (one sub-folder per class, or images of ``class_name``);
    * a file: a bank saved by :meth:`MemoryBank.save` (refused when built for other weights).
    """
    source = str(source)  # a config file gives K as a number
    if Path(source).is_file():
        bank = MemoryBank.load(source, detector)
        logger.info("Loaded the memory bank %s (%s)", source, ", ".join(bank.class_names))
        return bank
    root = data_path if data_path is not None else "."
    count = reference_count(source)
    if count is not None:
        if data_path is None:
            raise ValueError("K normal references per class need a dataset (--data_path)")
        references = normal_references(load_samples(data_path, split=split), count, seed=seed)
    else:
        references = folder_references(source, class_name)
    return MemoryBank.build(detector, references, root, batch_size=batch_size, num_workers=num_workers,
                            precision=precision)
