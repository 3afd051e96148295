"""What every method shares: the detector interface, settings and registry, the training loop,
the one inference path, calibration (the post-processor), evaluation, visualisation, normal
references, the feature cache, checkpoints, losses, smoothing and precision handling. Parses no
arguments (that is :mod:`anomaly_clip.cli`)."""
