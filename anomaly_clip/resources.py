"""Where the repository's data files live: the ``configs/`` folder (protocols, published tables)."""
from __future__ import annotations

import os
from pathlib import Path

CONFIGS_ENV = "ANOMALY_CLIP_CONFIGS"


def configs_dir() -> Path:
    """``$ANOMALY_CLIP_CONFIGS`` if set, else the ``configs/`` folder beside the package's checkout."""
    folder = Path(os.environ.get(CONFIGS_ENV) or Path(__file__).resolve().parents[1] / "configs")
    if not folder.is_dir():
        raise FileNotFoundError(f"configs folder not found at {folder}: run from a checkout of the repository "
                                f"(pip install -e .) or set {CONFIGS_ENV} to its configs/ folder")
    return folder
