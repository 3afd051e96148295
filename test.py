"""Evaluate a checkpoint: ``python test.py --data_path DATA --checkpoint_path CKPT --save_path OUT``."""
from anomaly_clip.cli.main import run

if __name__ == "__main__":
    run("test")
