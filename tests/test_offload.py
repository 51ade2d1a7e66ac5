"""Block-level DiT offload (e2v.pipeline.offload): exact outputs, at most two groups resident, bnb refused."""

import copy

import pytest
import torch

from e2v.modules.dit import WanDiT
from e2v.modules.quantize import quantize_linears
from e2v.pipeline.offload import BlockOffload


def tiny_dit(num_layers: int = 5) -> WanDiT:
    torch.manual_seed(0)
    return WanDiT.from_preset("tiny", num_layers=num_layers).eval()


def dit_inputs(batch: int = 2):
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, 36, 2, 4, 6, generator=generator)
    text = torch.randn(batch, 7, 32, generator=generator)
    image = torch.randn(batch, 5, 32, generator=generator)
    return latents, torch.tensor([700.0, 300.0][:batch]), text, image


def on_host(offload: BlockOffload, group: int) -> bool:
    return all(now.data_ptr() == host.data_ptr() for host, now in offload.host_tensors(group))


@pytest.mark.parametrize("blocks_per_group", [1, 2, 5])
@torch.no_grad()
def test_offloaded_dit_equals_resident_and_streams_group_by_group(blocks_per_group):
    dit = tiny_dit()
    reference = copy.deepcopy(dit)(*dit_inputs())
    offload = BlockOffload(dit, "cpu", blocks_per_group)
    seen = []

    def record(index):
        # runs after the offload's own pre-hook: the running group is resident, the next one prefetched
        resident = offload.resident_groups()
        group = index // blocks_per_group
        assert group in resident and len(resident) <= 2
        assert not on_host(offload, group)  # the block computes with its device copies
        seen.append((index, resident))

    hooks = [block.register_forward_pre_hook(lambda module, args, i=i: record(i)) for i, block in enumerate(dit.blocks)]
    for _ in range(2):  # the second call starts from the group prefetched at the end of the first
        torch.testing.assert_close(dit(*dit_inputs()), reference, atol=0, rtol=0)
    assert [index for index, _ in seen] == list(range(5)) * 2
    groups = len(offload.groups)
    if groups > 1:
        assert seen[0][1] == [0, 1] and seen[-1][1] == sorted({groups - 1, 0})
    offload.release()
    assert offload.resident_groups() == [] and all(on_host(offload, g) for g in range(groups))
    # the small tensors (modulation tables, norms) stay resident, the matrices stream
    assert dit.blocks[0].attn1.to_q.weight.data_ptr() == offload.host_tensors(0)[0][0].data_ptr()
    offload.remove()
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(dit(*dit_inputs()), reference, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["int8wo", "fp8"])
@torch.no_grad()
def test_weight_only_quantised_blocks_stream(mode):
    dit = quantize_linears(tiny_dit(3), mode, skip=("condition_embedder.*", "proj_out"))
    reference = copy.deepcopy(dit)(*dit_inputs())
    offload = BlockOffload(dit, "cpu", 1)
    names = {slot.name for group in offload._slots for slot in group}
    assert {"weight", "weight_scale", "bias"} <= names
    torch.testing.assert_close(dit(*dit_inputs()), reference, atol=0, rtol=0)


def test_bitsandbytes_blocks_are_refused_and_group_size_checked():
    pytest.importorskip("bitsandbytes")
    dit = quantize_linears(tiny_dit(2), "int8", skip=("condition_embedder.*", "proj_out"))
    with pytest.raises(ValueError, match="bitsandbytes layers .*int8wo"):
        BlockOffload(dit, "cpu", 1)
    with pytest.raises(ValueError, match="blocks_per_group >= 1"):
        BlockOffload(tiny_dit(2), "cpu", 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.no_grad()
def test_cuda_offload_matches_and_keeps_blocks_on_the_host():
    dit = tiny_dit()
    reference = copy.deepcopy(dit).cuda()(*[x.cuda() for x in dit_inputs()])
    offload = BlockOffload(dit, "cuda", 2)
    assert offload.host_tensors(0)[0][0].is_pinned()
    out = dit(*[x.cuda() for x in dit_inputs()])
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    offload.release()
    assert all(not now.is_cuda for g in range(len(offload.groups)) for _, now in offload.host_tensors(g))
