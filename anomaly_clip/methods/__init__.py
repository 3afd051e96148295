"""Built-in methods; importing this package registers them in :data:`anomaly_clip.detector.METHODS`."""
from . import anomalyclip  # noqa: F401
