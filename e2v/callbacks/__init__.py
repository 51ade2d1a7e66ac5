"""Lightning callbacks: EMA of the trainable weights, sample videos, throughput."""

from e2v.callbacks.ema import EMA
from e2v.callbacks.samples import SampleVideos
from e2v.callbacks.throughput import SamplesPerSecond

__all__ = ["EMA", "SampleVideos", "SamplesPerSecond"]
