import math
import subprocess
import sys
import textwrap

import pytest
import torch

from e2v import registry
from e2v.modules.attention import attention, chunked_attention, resolve_backend
from e2v.modules.dit import WanDiT


def math_attention(q, k, v):
    """Reference softmax attention on [B, S, H, D], computed in float64."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return (weights @ v).transpose(1, 2).float()


@pytest.mark.parametrize("backend", ["sdpa", "chunked", {"name": "chunked", "chunk_size": 7}])
@pytest.mark.parametrize("sq,sk", [(50, 50), (33, 80), (1, 9)])
def test_backends_match_math_reference(backend, sq, sk):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, sq, 3, 16), torch.randn(2, sk, 3, 16), torch.randn(2, sk, 3, 16)
    out = attention(q, k, v, backend)
    assert out.shape == (2, sq, 3, 16)
    torch.testing.assert_close(out, math_attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_chunked_gradients_equal_sdpa():
    torch.manual_seed(0)
    inputs = [torch.randn(1, 40, 2, 8, requires_grad=True) for _ in range(3)]
    weights = torch.randn(1, 40, 2, 8)
    (attention(*inputs, "sdpa") * weights).sum().backward()
    expected = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    (chunked_attention(*inputs, chunk_size=6) * weights).sum().backward()
    for got, want in zip((t.grad for t in inputs), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_flash_refuses_cpu_fp32_clearly():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(ValueError, match="CUDA fp16/bf16"):
        attention(q, q, q, "flash")


def test_unknown_backend_and_bad_shapes():
    q = torch.randn(1, 4, 2, 8)
    with pytest.raises(KeyError, match="known attention names: .*chunked.*sdpa"):
        attention(q, q, q, "no-such-backend")
    with pytest.raises(ValueError, match=r"\[B, S, heads, head_dim\]"):
        attention(q[0], q[0], q[0])
    with pytest.raises(ValueError, match="chunk_size >= 1"):
        resolve_backend({"name": "chunked", "chunk_size": 0})


calls = []


@registry.register("attention", "test-counting")
def counting_backend(base="sdpa"):
    """Counts calls, then runs a base backend (the shape of a sequence-parallel wrapper)."""
    inner = resolve_backend(base)

    def run(q, k, v):
        calls.append(q.shape)
        return inner(q, k, v)

    return run


def test_third_party_backend_runs_inside_the_dit():
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny").eval()
    inputs = (torch.randn(1, 36, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 5, 32),
              torch.randn(1, 257, model.config.image_dim))
    with torch.no_grad():
        expected = model(*inputs)
        calls.clear()
        got = model(*inputs, attention="test-counting")
    # per block: self-attention, text cross-attention, image cross-attention
    assert len(calls) == 3 * model.config.num_layers
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_chunked_memory_does_not_grow_with_s_squared():
    """S = 8192 tokens, 1 head: a full score matrix would take 256 MiB; chunked attention stays far below."""
    script = textwrap.dedent(
        """
        import resource, torch
        from e2v.modules.attention import chunked_attention
        torch.set_num_threads(1)
        q = torch.randn(1, 8192, 1, 16); k = torch.randn(1, 8192, 1, 16); v = torch.randn(1, 8192, 1, 16)
        chunked_attention(q[:, :512], k, v, chunk_size=512)  # warm up allocator and kernels
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = chunked_attention(q, k, v, chunk_size=512)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak_mib = float(result.stdout.strip().splitlines()[-1])
    assert peak_mib < 64, f"chunked attention grew resident memory by {peak_mib:.0f} MiB"
