"""FSDP2 on 2 CPU processes (gloo): E2VDiffusion(fsdp=...) builds its DiT on the meta device, configure_model
shards it and each rank loads only its own shards from the weights folder; the bf16 mixed-precision policy keeps
the fp32 islands in fp32; a distributed checkpoint of the shards (and of a sharded EMA) exports to a release root
whose DiT equals the sharded one."""

import socket

import pytest
import torch

from test_export import TEXT, dit_inputs, dit_output, export, exported_dit, save_release

WORLD = 2
FSDP = {"param_dtype": "bfloat16", "reduce_dtype": "float32"}


def _worker(rank, port, root, out):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from e2v.callbacks.ema import SHARDED_PREFIX
    from e2v.tasks.e2v_diffusion import E2VDiffusion
    from e2v.tasks.sharding import is_meta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        module = E2VDiffusion(dit={"name": "wan", "weights": str(root / "transformer")}, text_encoder=TEXT, fsdp=FSDP)
        assert is_meta(module.dit)  # nothing of the DiT allocated before configure_model
        module._device_mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("data_parallel",))
        module.configure_model()
        assert not is_meta(module.dit)
        folder = load_file(str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
        for name, param in module.dit.named_parameters():
            assert isinstance(param, DTensor) and param.dtype == torch.float32, name  # fp32 master shards
            rows = folder[name].chunk(WORLD)  # FSDP2's split of dim 0: a rank past the last chunk holds no rows
            expected = rows[rank] if rank < len(rows) else folder[name][:0]
            assert torch.equal(param.to_local(), expected), name  # this rank's rows, read from the folder

        seen = {}

        def hook(name):
            def record(module, args, output):
                seen[name] = (module.weight.dtype, output.dtype)
            return record

        for name in ("condition_embedder.time_proj", "blocks.0.norm2", "blocks.0.attn1.to_out.0", "proj_out"):
            module.dit.get_submodule(name).register_forward_hook(hook(name))
        output = module.dit(*dit_inputs())
        output.float().square().mean().backward()
        assert seen["condition_embedder.time_proj"] == (torch.float32, torch.float32)  # fp32 island, gathered fp32
        assert seen["blocks.0.norm2"][0] == torch.float32
        assert seen["blocks.0.attn1.to_out.0"] == seen["proj_out"] == (torch.bfloat16, torch.bfloat16)
        assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in module.dit.parameters())

        # a distributed checkpoint as ModelParallelStrategy writes it, with the EMA callback's shards beside the weights
        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=False))
        ema = {SHARDED_PREFIX + k: (v * 0.5).detach() for k, v in state.items() if k.startswith("dit.")}
        dcp.save({"state_dict": {**state, **ema}}, checkpoint_id=str(out / "last.ckpt"))
        full_ema = {k.removeprefix(SHARDED_PREFIX + "dit."): v.full_tensor() for k, v in ema.items()}
        if rank == 0:
            torch.save({"hyper_parameters": dict(module.hparams), "callbacks": {"EMA": {"sharded": sorted(ema)}}},
                       out / "last.ckpt" / "meta.pt")
            torch.save({"output": output.detach(), "ema": full_ema}, out / "expected.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    import torch.multiprocessing as mp

    from e2v.tasks.e2v_diffusion import E2VDiffusion

    torch.manual_seed(0)
    root = save_release(E2VDiffusion(text_encoder=TEXT), tmp_path_factory.mktemp("release"))
    out = tmp_path_factory.mktemp("run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, root, out), nprocs=WORLD, join=True)
    return root, out


@pytest.mark.slow
def test_each_rank_loads_its_shards_and_runs_bf16_with_fp32_islands(sharded_run):
    root, out = sharded_run
    from e2v.modules.dit import WanDiT

    reference = dit_output(WanDiT.from_pretrained(str(root / "transformer")))
    sharded = torch.load(out / "expected.pt", weights_only=True)["output"]
    assert (sharded.float() - reference).norm() / reference.norm() < 3e-2  # bf16 compute of the same weights


@pytest.mark.slow
def test_two_rank_distributed_checkpoint_exports(sharded_run, tmp_path):
    from e2v.modules.dit import WanDiT

    root, out = sharded_run
    export(out / "last.ckpt", tmp_path / "ema", "--base", str(root))
    export(out / "last.ckpt", tmp_path / "raw", "--weights", "raw", "--base", str(root))
    torch.testing.assert_close(dit_output(exported_dit(tmp_path / "raw")),
                               dit_output(WanDiT.from_pretrained(str(root / "transformer"))), rtol=0, atol=0)
    reference = WanDiT.from_pretrained(str(root / "transformer"))
    reference.load_state_dict(torch.load(out / "expected.pt", weights_only=True)["ema"])
    torch.testing.assert_close(dit_output(exported_dit(tmp_path / "ema")), dit_output(reference), rtol=0, atol=0)
