"""Per-class accumulation of predictions during evaluation, then one metrics report.

Each batch is split by class and moved to the host at once: labels as bool, image scores as
float64 (a few numbers per image), maps in ``map_dtype`` (float32 by default, float16 to halve
the memory) and masks as bool. The per-class chunks are never concatenated; the metric
functions read them chunk by chunk, so evaluation holds the maps once plus the bounded
temporaries of :mod:`.ordering`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._inputs import as_binary, as_maps, as_scores, check_finite
from .ordering import DEFAULT_BLOCK_SIZE
from .pixel import pixel_metrics
from .pro import DEFAULT_FPR_LIMIT, DEFAULT_NUM_THRESHOLDS, check_pro_settings, get_aupro_definition
from .ranking import binary_ranking_metrics, is_applicable
from .report import LEVELS, ClassMetrics, MetricsReport

logger = logging.getLogger(__name__)

METRIC_SETS = tuple(LEVELS)
MAP_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INVERTED_MASK_COVERAGE = 0.5
"""Share of the pixels of a class's anomalous images above which their masks look inverted."""


@dataclass
class ClassData:
    """Per-class chunks as accumulated batch by batch (host tensors)."""

    labels: List[Tensor] = field(default_factory=list)
    scores: List[Tensor] = field(default_factory=list)
    maps: List[Tensor] = field(default_factory=list)
    masks: List[Tensor] = field(default_factory=list)
    map_peaks: List[Tensor] = field(default_factory=list)
    map_floors: List[Tensor] = field(default_factory=list)


class AnomalyEvaluator:
    """Collects labels, scores, maps and masks per class; :meth:`compute` gives the report.

    ``metrics``: ``"image-level"``, ``"pixel-level"`` or ``"image-pixel-level"``;
    ``aupro``: a name in :data:`~anomaly_clip.metrics.AUPRO_DEFINITIONS` (``"compat"``
    reproduces AnomalyCLIP's published tables, ``"exact"`` is the MVTec benchmark's).
    ``class_score_transform(scores, map_peaks, map_floors)``, if given, turns a whole class's
    image scores into the ones ranked for the image metrics (a method whose protocol fuses
    scores with each map's maximum over the class); it needs ``maps`` in every update.
    """

    def __init__(self, metrics: str = "image-pixel-level", aupro: str = "compat",
                 map_dtype: torch.dtype = torch.float32, fpr_limit: float = DEFAULT_FPR_LIMIT,
                 num_thresholds: int = DEFAULT_NUM_THRESHOLDS, block_size: int = DEFAULT_BLOCK_SIZE,
                 progress: bool = False,
                 class_score_transform: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None):
        if metrics not in LEVELS:
            raise ValueError(f"metrics must be one of {METRIC_SETS}, got {metrics!r}")
        if map_dtype not in MAP_DTYPES:
            raise ValueError(f"map_dtype must be one of {MAP_DTYPES}, got {map_dtype}")
        get_aupro_definition(aupro)
        check_pro_settings(fpr_limit, num_thresholds)
        self.metrics = metrics
        self.aupro = aupro
        self.map_dtype = map_dtype
        self.fpr_limit = fpr_limit
        self.num_thresholds = num_thresholds
        self.block_size = block_size
        self.progress = progress
        self.class_score_transform = class_score_transform
        self._classes: Dict[str, ClassData] = {}

    @property
    def pixel_level(self) -> bool:
        return self.metrics != "image-level"

    @property
    def class_names(self) -> List[str]:
        return list(self._classes)

    def reset(self) -> None:
        self._classes.clear()

    def update(self, class_names: Sequence[str], labels: Tensor, scores: Tensor,
               maps: Optional[Tensor] = None, masks: Optional[Tensor] = None,
               map_peaks: Optional[Tensor] = None, map_floors: Optional[Tensor] = None) -> None:
        """Add one batch: ``labels``/``scores`` ``[N]``, ``maps``/``masks`` ``[N, H, W]`` (pixel metrics);
        ``map_peaks``/``map_floors`` ``[N]``, each map's maximum and minimum, when the caller has them."""
        class_names = list(class_names)
        count = len(class_names)
        labels = as_binary(torch.as_tensor(labels), "labels").reshape(-1)
        scores = torch.as_tensor(scores)
        _check_finite_by_class(scores, class_names, "image scores")
        scores = as_scores(scores)
        if labels.numel() != count or scores.numel() != count:
            raise ValueError(f"{count} class names but {labels.numel()} labels and {scores.numel()} scores")
        if self.pixel_level:
            if maps is None or masks is None:
                raise ValueError(f"metrics={self.metrics!r} needs maps and masks")
            maps = as_maps(maps)[0]
            masks = as_binary(masks, "masks").reshape(maps.shape)
            if maps.shape[0] != count:
                raise ValueError(f"{count} class names but {maps.shape[0]} maps")
            _check_finite_by_class(maps, class_names, "maps")
        if self.class_score_transform is not None:
            if maps is None:
                raise ValueError("class_score_transform needs the maps of every batch")
            if map_peaks is None or map_floors is None:
                flat = torch.as_tensor(maps).reshape(count, -1)
                map_peaks, map_floors = flat.amax(dim=1), flat.amin(dim=1)
            peaks, floors = map_peaks, map_floors
        for name in dict.fromkeys(class_names):
            index = [i for i, other in enumerate(class_names) if other == name]
            data = self._classes.setdefault(name, ClassData())
            data.labels.append(_take(labels, index).to("cpu"))
            data.scores.append(_take(scores, index).to("cpu", torch.float64))
            if self.class_score_transform is not None:
                data.map_peaks.append(_take(peaks, index).to("cpu", torch.float64))
                data.map_floors.append(_take(floors, index).to("cpu", torch.float64))
            if self.pixel_level:
                data.maps.append(_take(maps, index).to("cpu", self.map_dtype))
                data.masks.append(_take(masks, index).to("cpu"))

    def compute(self) -> MetricsReport:
        """Metrics of every class seen so far, in order of first appearance, plus their mean."""
        if not self._classes:
            raise ValueError("no predictions were added; call update() first")
        return self.report(self.class_metrics(self.class_names))

    def class_metrics(self, class_names: Sequence[str]) -> List[ClassMetrics]:
        """One row per named class (each must have been seen)."""
        return [self._class_metrics(name, self._classes[name])
                for name in tqdm(class_names, desc="metrics", disable=not self.progress, dynamic_ncols=True,
                                 leave=False)]

    def report(self, rows: Sequence[ClassMetrics]) -> MetricsReport:
        """A report of ``rows`` with this evaluator's settings."""
        return MetricsReport(list(rows), metrics=self.metrics, aupro_definition=self.aupro,
                             fpr_limit=self.fpr_limit, num_thresholds=self.num_thresholds)

    def pop_class(self, name: str) -> Optional[ClassData]:
        """Remove and return what was accumulated for class ``name`` (None if unseen), e.g. to
        hand it to the process that computes the class's metrics."""
        return self._classes.pop(name, None)

    def extend_class(self, name: str, parts: Sequence[ClassData]) -> None:
        """Append accumulated chunks of class ``name``, in the order given, after those held."""
        data = self._classes.setdefault(name, ClassData())
        for part in parts:
            for item in fields(ClassData):
                getattr(data, item.name).extend(getattr(part, item.name))

    def _class_metrics(self, name: str, data: ClassData) -> ClassMetrics:
        labels = torch.cat(data.labels)
        values = {}
        if self.metrics != "pixel-level":
            scores = torch.cat(data.scores)
            if self.class_score_transform is not None:
                scores = self.class_score_transform(scores, torch.cat(data.map_peaks), torch.cat(data.map_floors))
            image = binary_ranking_metrics(scores, labels)
            if not is_applicable(image.auroc):
                logger.info("class %s: all %d images share one label; image metrics not applicable",
                            name, labels.numel())
            values.update(image_auroc=image.auroc, image_ap=image.average_precision, image_f1_max=image.f1_max)
        if self.pixel_level:
            _warn_if_masks_look_inverted(name, data.labels, data.masks)
            pixel = pixel_metrics(data.maps, data.masks, aupro=self.aupro, fpr_limit=self.fpr_limit,
                                  num_thresholds=self.num_thresholds, block_size=self.block_size)
            if not is_applicable(pixel.auroc):
                logger.info("class %s: masks have no anomalous (or no normal) pixel; pixel metrics not applicable",
                            name)
            values.update(pixel_auroc=pixel.auroc, pixel_ap=pixel.average_precision, pixel_f1_max=pixel.f1_max,
                          pixel_aupro=pixel.aupro)
        return ClassMetrics(name, labels.numel(), int(labels.sum()), **values)


def _check_finite_by_class(values: Tensor, class_names: Sequence[str], what: str) -> None:
    """NaN or infinity makes the metrics of a class undefined, so it is an error naming the
    classes hit; one reduction when all is well, the culprits are looked up only when not."""
    if not values.numel() or values.is_complex() or values.dtype == torch.bool:
        return
    try:
        check_finite(values, what)
    except ValueError:
        if values.shape[0] != len(class_names):
            raise
        hit = (~torch.isfinite(values.reshape(len(class_names), -1))).any(dim=1).tolist()
        classes = ", ".join(repr(name) for name in dict.fromkeys(n for n, bad in zip(class_names, hit) if bad))
        raise ValueError(f"{what} of class {classes} contain NaN or infinite values ({sum(hit)} of {len(hit)} "
                         "images in this batch); metrics are undefined for them (a diverged model, or float16 "
                         "overflow under mixed precision?)") from None


def _warn_if_masks_look_inverted(name: str, labels: Sequence[Tensor], masks: Sequence[Tensor]) -> None:
    """Warn when the masks of a class's anomalous images mark most of their pixels as defect
    (more than :data:`INVERTED_MASK_COVERAGE`): the sign of masks stored inverted (defect 0,
    background 255), against which every pixel metric would be computed. One pass of sums over
    the boolean chunks already held, cheap beside the metrics themselves."""
    defect = total = 0
    for label_chunk, mask_chunk in zip(labels, masks):
        anomalous = mask_chunk[label_chunk]
        defect += int(anomalous.sum())
        total += anomalous.numel()
    if total and defect > INVERTED_MASK_COVERAGE * total:
        logger.warning("class %s: the masks of its anomalous images mark %.0f%% of their pixels as defect; are "
                       "they inverted (defect 0, background non-zero)? Pixel metrics treat non-zero mask pixels "
                       "as defect", name, 100.0 * defect / total)


def _take(values: Tensor, index: List[int]) -> Tensor:
    if len(index) == values.shape[0]:
        return values
    return values[torch.tensor(index, device=values.device)]
