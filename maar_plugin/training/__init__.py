"""Certified training: configuration, ε schedule, the training loop, checkpoints and metrics."""
