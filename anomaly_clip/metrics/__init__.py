"""Evaluation metrics for anomaly detection: exact, fast, memory-bounded, per class.

Image level: AUROC, AP, F1-max. Pixel level: AUROC, AP, F1-max, AUPRO (``"compat"``:
AnomalyCLIP's 200-threshold definition, the default, which reproduces the published tables;
``"exact"``: the MVTec AD benchmark's). "Not applicable" values are NaN in the functions and
``N/A`` / ``null`` in reports.
"""
from .evaluator import METRIC_SETS, AnomalyEvaluator
from .ordering import DEFAULT_BLOCK_SIZE
from .pixel import PixelMetrics, pixel_metrics
from .pro import AUPRO_DEFINITIONS, AuproDefinition, aupro, get_aupro_definition, register_aupro
from .ranking import (PositiveGroups, RankingMetrics, binary_auroc, binary_average_precision, binary_f1_max,
                      binary_f1_max_threshold, binary_ranking_metrics, is_applicable)
from .regions import LabelledMaps, Regions, label_regions
from .report import ClassMetrics, MetricsReport

__all__ = [
    "AUPRO_DEFINITIONS", "AnomalyEvaluator", "AuproDefinition", "ClassMetrics", "DEFAULT_BLOCK_SIZE",
    "LabelledMaps", "METRIC_SETS", "MetricsReport", "PixelMetrics", "PositiveGroups", "RankingMetrics", "Regions",
    "aupro",
    "binary_auroc", "binary_average_precision", "binary_f1_max", "binary_f1_max_threshold", "binary_ranking_metrics",
    "get_aupro_definition", "is_applicable", "label_regions", "pixel_metrics", "register_aupro",
]
