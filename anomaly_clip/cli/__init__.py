"""Command-line entry points: ``anomaly-clip <command>``, ``train.py`` and ``test.py``."""
from .main import COMMANDS, main
from .summarize import summarize_main
from .test import test_main
from .train import train_main

__all__ = ["COMMANDS", "main", "summarize_main", "test_main", "train_main"]
