"""Metadata generator: ``python -m generate_dataset_json <dataset> --root DIR``.

Turns a dataset stored in its published folder layout (see ``--list`` and docs/datasets.md)
into AnomalyCLIP ``meta.json`` and/or AA-CLIP jsonl files inside the dataset root.
"""
from .cli import generate, main

__all__ = ["generate", "main"]
