"""LoRA through peft on tiny configs: only the adapters train, checkpoints and optimizer state hold only them, a
resumed run equals an uninterrupted one, merging changes nothing, and ``--lora`` / export use the trained adapter."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from e2v.lora import LoRAConfig, attach_adapter, is_adapter_key, load_adapter, lora_layers, merge_lora
from e2v.modules.dit import WanDiT
from e2v.modules.weights import CheckpointError
from e2v.tasks.e2v_diffusion import E2VDiffusion
from test_export import save_release

TEXT = {"name": "umt5", "preset": "tiny", "max_length": 16}


def make_batch(seed=0, b=1, n=2, frames=9, size=32):
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, 3, frames, size, size, generator=g) * 2 - 1,
        "refs": torch.rand(b, n, 3, size, size, generator=g) * 2 - 1,
        "refs_clip": torch.rand(b, n, 3, 32, 32, generator=g) * 2 - 1,
        "caption": ["a red star over grass"] * b,
        "id": [f"clip{seed}-{i}" for i in range(b)],
    }


def dit_inputs(dit, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = dit.config
    return (torch.randn(2, cfg.in_channels, 2, 4, 4, generator=g), torch.tensor([100.0, 700.0]),
            torch.randn(2, 5, cfg.text_dim, generator=g), torch.randn(2, 6, cfg.image_dim, generator=g))


def lora_module(targets="image_kv", **lora):
    torch.manual_seed(0)
    return E2VDiffusion(text_encoder=TEXT, lora={"rank": 4, "alpha": 8.0, "targets": targets, **lora},
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2))


def randomize_adapters(dit, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if is_adapter_key(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("targets, per_block", [("image_kv", 2), ("attention", 10)])
def test_only_adapters_train_and_the_rest_stays_bit_identical(targets, per_block):
    module = lora_module(targets)
    dit = module.dit
    assert len(lora_layers(dit)) == per_block * dit.config.num_layers
    before = {k: v.clone() for k, v in dit.state_dict().items() if not is_adapter_key(k)}
    adapters = {k: v.clone() for k, v in dit.state_dict().items() if is_adapter_key(k)}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(is_adapter_key(n) for n in trainable)
    optimizer = module.configure_optimizers()
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)
    for step in range(3):
        loss = module.training_step(make_batch(step), step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dit.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # base: bit-identical
    assert any(not torch.equal(after[k], v) for k, v in adapters.items())  # the adapters moved
    assert all(is_adapter_key(k) for k in module.state_dict())  # the checkpoint's state: adapters only


def test_fresh_adapter_is_the_identity_and_merge_equals_unmerged():
    base = WanDiT.from_preset("tiny")
    inputs = dit_inputs(base)
    with torch.no_grad():
        reference = base(*inputs)
    adapted = copy.deepcopy(base)
    from e2v.lora import apply_lora

    apply_lora(adapted, LoRAConfig(rank=4, alpha=8.0, targets="attention"))
    with torch.no_grad():
        torch.testing.assert_close(adapted(*inputs), reference, rtol=0, atol=0)  # B = 0 at the start
        randomize_adapters(adapted)
        unmerged = adapted(*inputs)
        assert (unmerged - reference).abs().max() > 1e-2  # the adapter does change the output
        merged = merge_lora(adapted)
        assert not lora_layers(merged) and type(merged.blocks[0].attn1.to_q) is torch.nn.Linear
        torch.testing.assert_close(merged(*inputs), unmerged, rtol=1e-5, atol=1e-5)
        assert set(merged.state_dict()) == set(base.state_dict())


def test_quantized_base_trains_adapters_and_refuses_merge():
    module = lora_module("image_kv", quantize="int8")
    assert type(module.dit.blocks[0].attn2.add_k_proj).__name__ == "Linear8bitLt"  # peft's bitsandbytes LoRA
    assert type(module.dit.blocks[0].attn1.to_q).__name__ == "Linear8bitLt"  # the base, quantised
    loss = module.training_step(make_batch(), 0)
    loss.backward()
    grads = {n for n, p in module.named_parameters() if p.grad is not None}
    assert grads and all(is_adapter_key(n) for n in grads)
    with pytest.raises(ValueError, match="quantised\\) base"):
        merge_lora(module.dit)


def test_bad_lora_options_are_clear_errors():
    with pytest.raises(ValueError, match="lora: unknown option\\(s\\) \\['rnk'\\]"):
        E2VDiffusion(text_encoder=TEXT, lora={"rnk": 4})
    with pytest.raises(ValueError, match="rank must be an integer >= 1.*targets must be one of image_kv, attention"):
        LoRAConfig(rank=0, targets="mlp")
    with pytest.raises(ValueError, match="quantize must be null or one of int8, nf4, got 'fp8'"):
        LoRAConfig(rank=4, quantize="fp8")  # weight-only fp8 / int8wo layers: peft cannot wrap them
    with pytest.raises(ValueError, match="matches no layer of WanDiT \\(this DiT has no image branch"):
        from e2v.lora import apply_lora

        apply_lora(WanDiT.from_preset("tiny-t2v"), LoRAConfig())


def test_adamw8bit_runs_on_cpu_and_refuses_a_device_without_kernel(monkeypatch):
    from e2v.tasks import optim_8bit

    module = lora_module()
    optimizer = optim_8bit.AdamW8bit([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    module.training_step(make_batch(), 0).backward()
    optimizer.step()
    monkeypatch.setattr(optim_8bit, "has_8bit_kernel", lambda device_type: device_type != "cpu")
    with pytest.raises(RuntimeError, match="has no 8-bit AdamW kernel for cpu tensors .*torch.optim.AdamW"):
        optim_8bit.AdamW8bit([torch.nn.Parameter(torch.zeros(4))], lr=1e-3)


class Batches(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader([make_batch(i) for i in range(2)], batch_size=None)  # the checkpoint ends epoch 0


def fit(tmp_path, max_steps, ckpt_path=None):
    module = lora_module("attention")
    trainer = pl.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                         num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=Batches(), ckpt_path=ckpt_path)
    return module, trainer


def test_checkpoint_holds_only_adapters_and_resume_restores_them(tmp_path):
    module, trainer = fit(tmp_path, max_steps=2)
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    adapters = {n: p for n, p in module.named_parameters() if p.requires_grad}
    assert set(state) == set(adapters)  # adapter tensors only: no frozen base, no VAE / encoders
    assert checkpoint["hyper_parameters"]["lora"]["targets"] == "attention"
    moments = checkpoint["optimizer_states"][0]["state"]
    assert len(moments) == len(adapters)  # optimizer state for the adapters only
    assert all(m["exp_avg"].shape == adapters[n].shape for m, n in zip(moments.values(), adapters))

    resumed, _ = fit(tmp_path, max_steps=3, ckpt_path=path)
    straight, _ = fit(tmp_path, max_steps=3)
    for name, tensor in straight.state_dict().items():  # same adapters as a run that never stopped
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0)

    # the adapter on a fresh DiT, merged, reproduces the trained (unmerged) model; export writes that merged DiT
    inputs = dit_inputs(module.dit)
    with torch.no_grad():
        trained = module.dit(*inputs)
        fresh = WanDiT.from_preset("tiny")
        fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in module.dit.state_dict().items()
                               if not is_adapter_key(k)})
        torch.testing.assert_close(attach_adapter(fresh, path)(*inputs), trained, rtol=1e-5, atol=1e-5)
    config, _, adapter = load_adapter(path)
    assert config == LoRAConfig(rank=4, alpha=8.0, targets="attention") and all(map(is_adapter_key, adapter))


def test_export_merge_lora_and_generate_lora_use_the_trained_adapter(tmp_path, capsys):
    from e2v.export import export_command
    from e2v.pipeline.generate import build_parser, build_pipeline, generate_command
    from e2v.pipeline.pipeline import E2VPipeline

    torch.manual_seed(0)
    root = save_release(E2VDiffusion(text_encoder=TEXT), tmp_path / "release")
    module = E2VDiffusion(family={"name": "tiny", "weights": str(root)}, lora={"rank": 2, "targets": "image_kv"})
    randomize_adapters(module.dit)
    path = tmp_path / "run.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    inputs = dit_inputs(module.dit)
    with torch.no_grad():
        trained = module.dit(*inputs)

    assert export_command([str(path), "--out", str(tmp_path / "plain")]) == 2
    assert "is a LoRA checkpoint (adapters only): pass --merge-lora" in capsys.readouterr().err
    assert export_command([str(path), "--out", str(tmp_path / "out"), "--merge-lora"]) == 0
    shard = tmp_path / "out" / "transformer" / "diffusion_pytorch_model.safetensors"
    assert not any(is_adapter_key(k) for k in load_file(str(shard)))
    exported = E2VPipeline.from_weights(tmp_path / "out", solver={"name": "euler", "num_steps": 1}, dtype="float32")
    with torch.no_grad():
        torch.testing.assert_close(exported.dit(*inputs), trained, rtol=1e-5, atol=1e-5)

    request = ["--ref", "unused.png", "--prompt", "p", "--out", str(tmp_path / "v.mp4"), "--weights", str(root),
               "--device", "cpu", "--dtype", "float32"]
    pipe = build_pipeline(build_parser().parse_args([*request, "--lora", str(path)]), None)
    assert not lora_layers(pipe.dit)  # merged
    with torch.no_grad():
        torch.testing.assert_close(pipe.dit(*inputs), trained, rtol=1e-5, atol=1e-5)

    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "ref.png")
    request[1] = str(tmp_path / "ref.png")
    assert generate_command([*request, "--lora", str(tmp_path / "missing.ckpt")]) == 2
    assert f"--lora {tmp_path / 'missing.ckpt'} does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is not a LoRA checkpoint"):
        torch.save({"hyper_parameters": {"dit": {"name": "wan"}}, "state_dict": {}}, tmp_path / "full.ckpt")
        load_adapter(tmp_path / "full.ckpt")
