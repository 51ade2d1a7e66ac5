import pytest
import torch

from e2v.modules.solvers import FlowEuler, UniPC, flow_sigmas
from e2v.registry import build


def velocity_field(weight: torch.Tensor, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for the DiT: [B, C, ...] -> [B, C, ...]."""
    return torch.einsum("ij,bj...->bi...", weight, x) + torch.sin(x) * (timestep / 1000)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("shift", [1.0, 3.0, 8.0])
def test_unipc_matches_diffusers(order, shift):
    diffusers = pytest.importorskip("diffusers")
    num_steps = 10
    reference = diffusers.UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift, solver_order=order
    )
    reference.set_timesteps(num_steps)
    ours = build("solver", {"name": "unipc", "num_steps": num_steps, "shift": shift, "order": order})
    ours.timesteps()
    assert torch.equal(ours.sigmas, reference.sigmas)

    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(4, 4, generator=generator) * 0.3
    x_ref = torch.randn(2, 4, 3, 5, generator=generator)
    x_ours = x_ref.clone()
    for i, t in enumerate(reference.timesteps):
        x_ref = reference.step(velocity_field(weight, x_ref, t), t, x_ref).prev_sample
        x_ours = ours.step(velocity_field(weight, x_ours, t), i, x_ours)
    torch.testing.assert_close(x_ours, x_ref, atol=1e-5, rtol=1e-5)


def test_euler_step_by_hand():
    solver = FlowEuler(num_steps=4, shift=2.0)
    timesteps = solver.timesteps()
    base = torch.linspace(1, 1 / 1000, 5, dtype=torch.float64)[:-1]
    expected_sigmas = 2 * base / (1 + base)
    expected_sigmas[0] -= 1e-6
    torch.testing.assert_close(timesteps, (expected_sigmas * 1000).float())
    x = torch.tensor([1.0, -2.0])
    v = torch.tensor([0.5, 0.25])
    out = solver.step(v, 1, x)
    delta = expected_sigmas[2] - expected_sigmas[1]
    torch.testing.assert_close(out, (x.double() + delta * v.double()).float())
    # the last step lands on sigma = 0
    assert solver.sigmas[-1] == 0


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_linear_flow_is_integrated_exactly(name):
    """With the exact velocity of a straight path x_s = (1 - s) x0 + s eps, every solver lands on x0."""
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 8, generator=generator)
    noise = torch.randn(3, 8, generator=generator)
    solver = build("solver", {"name": name, "num_steps": 7, "shift": 5.0})
    solver.timesteps()
    x = (1 - solver.sigmas[0]) * x0 + solver.sigmas[0] * noise
    for i in range(7):
        sigma = solver.sigmas[i]
        velocity = (x - x0) / sigma  # = eps - x0 along the path
        x = solver.step(velocity, i, x)
        expected = (1 - solver.sigmas[i + 1]) * x0 + solver.sigmas[i + 1] * noise
        torch.testing.assert_close(x, expected, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(x, x0, atol=2e-5, rtol=0)


def test_unipc_reset_makes_runs_repeatable():
    solver = UniPC(num_steps=5, shift=3.0)
    weight = torch.eye(2) * 0.5

    def run():
        x = torch.ones(1, 2)
        for i, t in enumerate(solver.timesteps()):
            x = solver.step(velocity_field(weight, x, t), i, x)
        return x

    torch.testing.assert_close(run(), run(), atol=0, rtol=0)


def test_solver_errors():
    with pytest.raises(ValueError, match="num_steps"):
        flow_sigmas(0, 1.0)
    with pytest.raises(ValueError, match="order"):
        UniPC(order=4)
    with pytest.raises(ValueError, match="shift"):
        FlowEuler(shift=0.0)
    solver = UniPC(num_steps=3)
    solver.timesteps()
    with pytest.raises(IndexError, match="outside"):
        solver.step(torch.zeros(1), 3, torch.zeros(1))
    solver.step(torch.zeros(1), 0, torch.zeros(1))
    with pytest.raises(ValueError, match="consecutive"):
        solver.step(torch.zeros(1), 2, torch.zeros(1))

