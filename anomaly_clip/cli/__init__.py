"""Command-line entry points: ``anomaly-clip <command>``, ``train.py`` and ``test.py``."""
from .calibrate import calibrate_main
from .main import COMMANDS, main
from .predict import predict_main
from .summarize import summarize_main
from .test import test_main
from .train import train_main

__all__ = ["COMMANDS", "calibrate_main", "main", "predict_main", "summarize_main", "test_main", "train_main"]
