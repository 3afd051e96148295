"""What every method shares: the detector interface and registry, the training loop, the
feature cache, checkpoints, evaluation, losses, smoothing and precision handling."""
