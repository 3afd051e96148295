"""Train a detector: ``python train.py --method anomalyclip --train_data_path DATA --save_path OUT``."""
from anomaly_clip.cli.main import run

if __name__ == "__main__":
    run("train")
