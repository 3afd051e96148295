"""Built-in methods; importing this package registers them in :data:`anomaly_clip.detector.METHODS`."""
from . import anomalyclip  # noqa: F401
from . import aaclip  # noqa: F401
from . import anomalyclip_adapters  # noqa: F401
