"""Evaluation metrics for anomaly detection: exact, fast, memory-bounded, per class.

Image level: AUROC, AP, F1-max. Pixel level: AUROC, AP, F1-max, AUPRO (``"compat"``:
AnomalyCLIP's 200-threshold definition, the default, which reproduces the published tables;
``"exact"``: the MVTec AD benchmark's). "Not applicable" values are NaN in the functions and
``N/A`` / ``null`` in reports.

Names load on first use, so the published tables (:mod:`.published`) import without torch.
"""
from ..lazy import lazy_exports

_EXPORTS = {
    "METRIC_SETS": "evaluator", "AnomalyEvaluator": "evaluator", "DEFAULT_BLOCK_SIZE": "ordering",
    "PixelMetrics": "pixel", "pixel_metrics": "pixel", "AUPRO_DEFINITIONS": "pro", "AuproDefinition": "pro",
    "aupro": "pro", "get_aupro_definition": "pro", "register_aupro": "pro", "PositiveGroups": "ranking",
    "RankingMetrics": "ranking", "binary_auroc": "ranking", "binary_average_precision": "ranking",
    "binary_f1_max": "ranking", "binary_f1_max_threshold": "ranking", "binary_ranking_metrics": "ranking",
    "is_applicable": "ranking", "LabelledMaps": "regions", "Regions": "regions", "label_regions": "regions",
    "ClassMetrics": "report", "MetricsReport": "report",
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
