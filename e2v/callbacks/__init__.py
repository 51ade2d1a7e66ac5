"""Lightning callbacks: EMA of the trainable weights, sample videos, bench scores, throughput, progress lines."""

from e2v.callbacks.bench import Bench
from e2v.callbacks.ema import EMA
from e2v.callbacks.progress import ProgressLog
from e2v.callbacks.samples import SampleVideos
from e2v.callbacks.throughput import SamplesPerSecond

__all__ = ["Bench", "EMA", "ProgressLog", "SampleVideos", "SamplesPerSecond"]
