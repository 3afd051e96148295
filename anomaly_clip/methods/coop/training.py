"""CoOp training: AnomalyCLIP's recipe (glocal loss, Adam betas 0.5 / 0.999, cached frozen
features) on the context vectors only."""
from __future__ import annotations

from ...engine.config import TrainConfig
from ...engine.training import TrainData, TrainResult
from ..anomalyclip.config import AnomalyCLIPTraining
from ..components.training import train_glocal
from .model import CoOpDetector


def train(detector: CoOpDetector, data: TrainData, config: TrainConfig) -> TrainResult:
    """Train the context vectors of ``detector`` on the glocal loss with AnomalyCLIP's settings
    (``config.method``: :class:`~anomaly_clip.methods.anomalyclip.config.AnomalyCLIPTraining`,
    official defaults when None); class-aware prompts: each batch's class names pick its text rows.
    ``seg_loss_weight`` 0 trains the global loss alone (data without masks then works too)."""
    return train_glocal(detector, data, config, config.method or AnomalyCLIPTraining())
