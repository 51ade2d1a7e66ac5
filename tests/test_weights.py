import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from e2v.modules.dit import WanDiT
from e2v.modules.weights import CheckpointError


@pytest.fixture()
def saved(tmp_path):
    """A tiny DiT saved in 3+ shards; returns (model, folder)."""
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny")
    folder = tmp_path / "transformer"
    model.save_pretrained(str(folder), max_shard_bytes=20_000)
    return model, folder


def shards(folder):
    return sorted(folder.glob("*.safetensors"))


def test_missing_config(saved):
    _, folder = saved
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        WanDiT.from_pretrained(str(folder))


def test_missing_shard(saved):
    _, folder = saved
    gone = shards(folder)[1]
    gone.unlink()
    with pytest.raises(CheckpointError, match=f"lists shard\\(s\\) missing .*{gone.name}"):
        WanDiT.from_pretrained(str(folder))


def test_wrong_shapes_named(saved):
    _, folder = saved
    path = next(p for p in shards(folder) if "blocks.0.attn1.to_q.weight" in load_file(str(p)))
    tensors = load_file(str(path))
    tensors["blocks.0.attn1.to_q.weight"] = torch.zeros(5, 5)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"wrong shape keys: blocks.0.attn1.to_q.weight: checkpoint \(5, 5\)"):
        WanDiT.from_pretrained(str(folder))


def test_config_that_does_not_match_the_weights(saved):
    _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.2\."):
        WanDiT.from_pretrained(str(folder))


def test_pickle_bin_refused(tmp_path):
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny-t2v")
    model.save_pretrained(str(tmp_path))
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only pickle weights .*diffusion_pytorch_model.bin"):
        WanDiT.from_pretrained(str(tmp_path))


def test_unexpected_and_missing_keys_listed(tmp_path):
    torch.manual_seed(0)
    model = WanDiT.from_preset("tiny-t2v")
    model.save_pretrained(str(tmp_path))
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    del tensors["proj_out.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    tensors["blocks.0.attn2.norm_added_q.weight"] = torch.zeros(32)  # official checkpoints carry this unused key
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError) as info:
        WanDiT.from_pretrained(str(tmp_path))
    message = str(info.value)
    assert "missing keys: proj_out.bias" in message and "unexpected keys: extra.weight" in message
    assert "norm_added_q" not in message


def test_dtype_on_load(saved):
    model, folder = saved
    loaded = WanDiT.from_pretrained(str(folder), dtype="bf16")
    assert loaded.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert loaded.blocks[0].scale_shift_table.dtype == torch.float32
    assert torch.equal(loaded.blocks[0].scale_shift_table, model.blocks[0].scale_shift_table)
    assert torch.equal(loaded.proj_out.weight, model.proj_out.weight.bfloat16())


def test_from_pretrained_peak_memory_is_model_plus_one_shard(tmp_path):
    """A ~150 MB model in 4 shards: loading grows resident memory by about model + one shard, not more."""
    torch.manual_seed(0)
    overrides = dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=8, text_dim=64)
    model = WanDiT.from_preset("tiny-t2v", **overrides)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    model.save_pretrained(str(tmp_path), max_shard_bytes=model_bytes // 4 + 1)
    del model
    shard_bytes = [p.stat().st_size for p in shards(tmp_path)]
    assert 4 <= len(shard_bytes) <= 5
    script = textwrap.dedent(
        f"""
        import resource
        from e2v.modules.dit import WanDiT
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model = WanDiT.from_pretrained({str(tmp_path)!r})
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    peak = int(result.stdout.strip().splitlines()[-1])
    mib = 2**20
    report = f"peak +{peak / mib:.0f} MiB, model {model_bytes / mib:.0f} MiB, largest shard {max(shard_bytes) / mib:.0f} MiB"
    print(report)
    assert peak < model_bytes + max(shard_bytes) + 48 * mib, report
    assert peak < 0.7 * (2 * model_bytes + sum(shard_bytes)), report
