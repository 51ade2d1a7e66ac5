"""Lightning callbacks: EMA of the trainable weights, sample videos, throughput."""

from e2v.callbacks.ema import EMA

__all__ = ["EMA"]
