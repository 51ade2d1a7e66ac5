"""Rectified flow (the Wan training objective) and timestep samplers.

Convention: flow time ``t`` in [0, 1] runs from data (t = 0) to noise (t = 1):
``x_t = (1 - t) x0 + t eps`` and the DiT predicts the velocity ``v = eps - x0``; the DiT's timestep input is ``1000 t``.
"""

from __future__ import annotations

import torch

from e2v.registry import register

TIMESTEP_SCALE = 1000.0


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Map flow times toward noise: ``s t / (1 + (s - 1) t)`` (shift 1 is the identity)."""
    return shift * t / (1 + (shift - 1) * t)


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t [B]`` reshaped to broadcast over ``x [B, ...]``."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t eps`` for ``t [B]``."""
    t = expand_like(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow regression target ``eps - x0``."""
    return noise - x0


class TimestepSampler:
    """Draws flow times ``t [B]`` in [0, 1] for training; ``shift`` applies :func:`shift_time` afterwards."""

    def __init__(self, shift: float = 1.0):
        if shift <= 0:
            raise ValueError(f"timestep shift must be > 0, got {shift}")
        self.shift = shift

    def base(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return shift_time(self.base(n, generator), self.shift)


@register("timestep_sampler", "uniform", "t ~ U(0, 1), optionally shifted")
class UniformSampler(TimestepSampler):
    def base(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, generator=generator)


@register("timestep_sampler", "logit_normal", "t = sigmoid(N(mean, std)) (SD3-style), optionally shifted")
class LogitNormalSampler(TimestepSampler):
    def __init__(self, mean: float = 0.0, std: float = 1.0, shift: float = 1.0):
        super().__init__(shift)
        self.mean, self.std = mean, std

    def base(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator))


@register("timestep_sampler", "shifted", "uniform t mapped by the Wan shift s t / (1 + (s - 1) t) (default s = 5)")
def shifted_sampler(shift: float = 5.0) -> UniformSampler:
    return UniformSampler(shift=shift)
