"""Detectors: architectures, checkpoints, inference. Knows torch, nothing of HTTP or Redis."""
