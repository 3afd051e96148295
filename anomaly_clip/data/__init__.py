"""Datasets: metadata formats, the registry of published layouts, loading, few-shot subsets and
references, augmentation, pseudo-anomalies and the synthetic dataset.

Names are imported lazily so that the command line (``anomaly-clip synthesize``, ``convert``) and
light users (the metadata generator) do not load more than they need.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List

_EXPORTS: Dict[str, str] = {
    "Sample": "records", "Metadata": "records", "count_table": "records",
    "read_meta_json": "formats", "write_meta_json": "formats", "read_jsonl": "formats", "write_jsonl": "formats",
    "meta_json_to_jsonl": "formats", "jsonl_to_meta_json": "formats", "write_metadata": "formats",
    "load_samples": "formats", "MetadataError": "formats",
    "DatasetInfo": "registry", "DATASETS": "registry", "get_dataset_info": "registry", "register": "registry",
    "scan_dataset": "registry", "dataset_names": "registry", "UnknownDatasetError": "registry",
    "LayoutError": "layouts",
    "AnomalyDataset": "dataset", "image_transform": "dataset", "load_image": "dataset",
    "OPENAI_CLIP_MEAN": "dataset", "OPENAI_CLIP_STD": "dataset", "MissingMaskError": "dataset",
    "DatasetValidationError": "dataset",
    "UnreadableImageError": "imaging", "IMAGE_SUFFIXES": "imaging", "read_rgb": "imaging",
    "read_binary_mask": "imaging",
    "few_shot_subset": "fewshot", "normal_references": "fewshot", "folder_references": "fewshot",
    "PseudoAnomalies": "pseudo_anomaly", "PseudoAnomalyDataset": "pseudo_anomaly",
    "AAClipAugmentation": "augment", "MosaicDataset": "mosaic",
    "generate_synthetic_dataset": "synthetic", "SYNTHETIC_CLASSES": "synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_EXPORTS))
