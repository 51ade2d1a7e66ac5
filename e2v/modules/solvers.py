"""Sampling solvers for rectified-flow models: flow Euler and UniPC multistep (flow prediction, B(h)=bh2).

Both walk a noise level ``sigma`` from ~1 (pure noise) to 0 (data) over ``num_steps`` steps on the schedule of
diffusers' ``UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift)``: ``sigma`` evenly spaced in
[1, 1/1000], shifted by ``s t / (1 + (s - 1) t)``, followed by a final 0. The model predicts the flow velocity
``v = eps - x0`` at ``x_sigma = (1 - sigma) x0 + sigma eps``; the DiT's timestep is ``1000 * sigma``.

``schedule="legacy"`` reproduces the schedule of diffusers as of April 2025, the one the official SkyReels-A2
weights were sampled with: ``sigma = shift(s)`` for ``s`` evenly spaced in [1 - 1/1000, 0) (no final 1/1000 point,
no 1e-6 nudge), and integer DiT timesteps ``floor(1000 * sigma)`` (999, 997, 994, ... 140 at 50 steps, shift 8).

Usage::

    solver = build("solver", {"name": "unipc", "shift": 8.0, "num_steps": 50})
    for i, t in enumerate(solver.timesteps()):
        sample = solver.step(model(sample, t), i, sample)
"""

from __future__ import annotations

import math

import torch

from e2v.modules.flow import TIMESTEP_SCALE, shift_time
from e2v.registry import register

NUM_TRAIN_TIMESTEPS = 1000
SCHEDULES = ("current", "legacy")


def _shifted_levels(num_steps: int, shift: float, schedule: str) -> torch.Tensor:
    """``[num_steps]`` float64 noise levels from ~1 down (the final 0 not included) of ``schedule``."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sigma schedule {schedule!r}; schedules: {', '.join(SCHEDULES)}")
    if schedule == "legacy":  # diffusers <= 0.33: flip(shift(1 - alphas))[:-1], alphas = linspace(1, 1/1000)
        levels = 1 - torch.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, num_steps + 1, dtype=torch.float64)
        return shift_time(levels.flip(0), shift)[:-1]
    sigmas = shift_time(torch.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, num_steps + 1, dtype=torch.float64)[:-1], shift)
    if abs(sigmas[0].item() - 1) < 1e-6:
        sigmas[0] -= 1e-6  # keeps log(1 - sigma) finite for UniPC
    return sigmas


def flow_sigmas(num_steps: int, shift: float, schedule: str = "current") -> torch.Tensor:
    """``[num_steps + 1]`` float32 noise levels from ~1 down to a final 0 (diffusers' flow-sigma schedule)."""
    sigmas = _shifted_levels(num_steps, shift, schedule)
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def flow_timesteps(num_steps: int, shift: float, schedule: str = "current") -> torch.Tensor:
    """``[num_steps]`` float32 DiT timesteps: ``1000 * sigma`` (``current``) or its integer part (``legacy``,
    taken in float64 like diffusers' ``astype(int64)``)."""
    if schedule == "legacy":
        return (_shifted_levels(num_steps, shift, schedule) * TIMESTEP_SCALE).floor().float()
    return flow_sigmas(num_steps, shift, schedule)[:-1] * TIMESTEP_SCALE


def fixed_sigmas(timesteps: list[float] | tuple[float, ...]) -> torch.Tensor:
    """``[n + 1]`` float32 noise levels of given DiT timesteps (``1000 * sigma``, strictly decreasing, in (0, 1000]),
    followed by a final 0: the fixed schedule of a distilled student."""
    sigmas = torch.tensor([float(t) for t in timesteps], dtype=torch.float64) / TIMESTEP_SCALE
    if len(sigmas) == 0 or not bool((sigmas[1:] < sigmas[:-1]).all()) or sigmas[-1] <= 0 or sigmas[0] > 1:
        raise ValueError(f"timesteps must be strictly decreasing values in (0, 1000], got {list(timesteps)}")
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


class FlowSolver:
    """Shared schedule handling: ``timesteps(n)`` sets the schedule and resets the solver's state.

    ``schedule``: ``"current"`` (diffusers' flow sigmas today) or ``"legacy"`` (diffusers of April 2025, integer
    timesteps: what the official SkyReels-A2 release sampled with). ``timesteps``: fixed DiT timesteps instead (a
    distilled student's, ``num_steps`` of them; ``shift`` and ``schedule`` then unused)."""

    def __init__(self, num_steps: int = 50, shift: float = 1.0, schedule: str = "current",
                 timesteps: list[float] | None = None) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.fixed = None if timesteps is None else fixed_sigmas(timesteps)
        if self.fixed is not None and len(self.fixed) - 1 != num_steps:
            raise ValueError(f"num_steps={num_steps} but {len(self.fixed) - 1} timesteps {list(timesteps)}")
        self.num_steps = num_steps
        self.shift = shift
        self.schedule = schedule
        self.sigmas = self._sigmas(num_steps)

    def _sigmas(self, num_steps: int) -> torch.Tensor:
        if self.fixed is None:
            return flow_sigmas(num_steps, self.shift, self.schedule)
        if num_steps != len(self.fixed) - 1:
            raise ValueError(f"this solver samples the {len(self.fixed) - 1} fixed timesteps it was built with, "
                             f"not {num_steps} steps")
        return self.fixed

    def timesteps(self, num_steps: int | None = None) -> torch.Tensor:
        """``[n]`` DiT timesteps (float32, see :func:`flow_timesteps`) for ``n`` steps (default ``num_steps``) of
        this run; sets ``sigmas`` and resets the multistep state."""
        num_steps = num_steps or self.num_steps
        self.sigmas = self._sigmas(num_steps)
        self.reset()
        if self.fixed is not None:
            return self.fixed[:-1] * TIMESTEP_SCALE
        return flow_timesteps(num_steps, self.shift, self.schedule)

    def reset(self) -> None:
        """Forget any multistep history (call before sampling a new video)."""

    def step(self, model_output: torch.Tensor, t_index: int, sample: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _check_index(self, t_index: int) -> None:
        if not 0 <= t_index < len(self.sigmas) - 1:
            raise IndexError(f"step index {t_index} is outside the {len(self.sigmas) - 1}-step schedule")


@register("solver", "euler")
class FlowEuler(FlowSolver):
    """First-order flow Euler: ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v``."""

    def step(self, model_output: torch.Tensor, t_index: int, sample: torch.Tensor) -> torch.Tensor:
        self._check_index(t_index)
        delta = (self.sigmas[t_index + 1] - self.sigmas[t_index]).item()
        return (sample.float() + delta * model_output.float()).to(sample.dtype)


def _log_snr(sigma: float) -> float:
    """``lambda = log(alpha / sigma)`` with ``alpha = 1 - sigma``; ``+inf`` at sigma = 0."""
    return math.inf if sigma == 0 else math.log(1 - sigma) - math.log(sigma)


def _unipc_coefficients(lambdas: list[float], lambda_target: float, order: int) -> tuple[list[float], float, list]:
    """UniPC (bh2, data prediction) coefficients for one update from ``lambdas[-1]`` to ``lambda_target``.

    ``lambdas`` holds the log-SNRs of the history points, newest last. Returns ``rks`` (relative step ratios
    of the older points), ``h_phi_1 = expm1(-h)`` (``B(h)`` equals it for bh2) and ``(R, b)`` of the order
    conditions as float64 tensors.
    """
    h = lambda_target - lambdas[-1]
    rks = [(lambdas[-1 - k] - lambdas[-1]) / h for k in range(1, order)] + [1.0]
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / h_phi_1)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return rks, h_phi_1, (torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64))


@register("solver", "unipc")
class UniPC(FlowSolver):
    """UniPC multistep predictor-corrector (Zhao et al. 2023) for flow prediction, bh2 variant.

    Matches diffusers' ``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
    flow_shift=shift, solver_order=order, solver_type="bh2", lower_order_final=True)``.
    """

    def __init__(self, num_steps: int = 50, shift: float = 1.0, order: int = 2, schedule: str = "current",
                 timesteps: list[float] | None = None) -> None:
        if order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {order}")
        super().__init__(num_steps, shift, schedule, timesteps)
        self.order = order
        self.reset()

    def reset(self) -> None:
        self._x0_history: list[torch.Tensor] = []  # data predictions, newest last
        self._index_history: list[int] = []
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _update(self, sample: torch.Tensor, target: int, order: int, corrected_x0: torch.Tensor | None) -> torch.Tensor:
        """One UniP step (``corrected_x0`` None) or UniC step from the newest history point to ``target``."""
        sigma_s, sigma_t = self.sigmas[self._index_history[-1]].item(), self.sigmas[target].item()
        lambdas = [_log_snr(self.sigmas[i].item()) for i in self._index_history[-order:]]
        rks, h_phi_1, (R, b) = _unipc_coefficients(lambdas, _log_snr(sigma_t), order)
        m0 = self._x0_history[-1]
        differences = [(self._x0_history[-1 - k] - m0) / rks[k - 1] for k in range(1, order)]
        if corrected_x0 is None:  # predictor: uses the order - 1 older points
            rhos = [] if order == 1 else [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        else:  # corrector: also uses the new prediction at the target
            rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
            differences.append(corrected_x0 - m0)
        alpha_t = 1 - sigma_t
        x = sigma_t / sigma_s * sample.float() - alpha_t * h_phi_1 * m0
        for rho, difference in zip(rhos, differences):
            x = x - alpha_t * h_phi_1 * rho * difference
        return x

    def step(self, model_output: torch.Tensor, t_index: int, sample: torch.Tensor) -> torch.Tensor:
        """Advance ``sample`` [B, ...] at ``sigmas[t_index]`` to ``sigmas[t_index + 1]`` given the velocity."""
        self._check_index(t_index)
        if self._index_history and self._index_history[-1] != t_index - 1:
            raise ValueError(f"UniPC steps must be consecutive: got index {t_index} after {self._index_history[-1]}")
        x0 = sample.float() - self.sigmas[t_index].item() * model_output.float()
        x = sample.float()
        if self._last_sample is not None:
            x = self._update(self._last_sample, t_index, self._last_order, corrected_x0=x0)
        self._x0_history = (self._x0_history + [x0])[-self.order :]
        self._index_history = (self._index_history + [t_index])[-self.order :]
        remaining = len(self.sigmas) - 1 - t_index
        self._last_order = min(self.order, remaining, len(self._x0_history))
        self._last_sample = x
        return self._update(x, t_index + 1, self._last_order, corrected_x0=None).to(sample.dtype)
