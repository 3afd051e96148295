"""Evaluate a checkpoint: ``python test.py --data_path DATA --checkpoint_path CKPT --save_path OUT``."""
from anomaly_clip.cli import test_main

if __name__ == "__main__":
    test_main()
