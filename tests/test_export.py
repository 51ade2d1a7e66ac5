"""``e2v export``: a full (.ckpt) or distributed (torch.distributed.checkpoint folder) E2VDiffusion checkpoint
becomes a release root whose DiT, loaded with ``--weights`` (E2VPipeline.from_weights), equals the checkpoint's."""

import json

import pytest
import torch

from e2v.callbacks import EMA
from e2v.export import export_command
from e2v.pipeline.pipeline import E2VPipeline
from e2v.tasks.e2v_diffusion import E2VDiffusion

TEXT = {"name": "umt5", "preset": "tiny", "max_length": 8}


def dit_inputs():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 36, 2, 4, 4, generator=g), torch.tensor([412.7]), torch.randn(1, 5, 32, generator=g),
            torch.randn(1, 7, 32, generator=g))


def dit_output(dit):
    with torch.no_grad():
        return dit(*dit_inputs())


def save_release(module, root):
    """The frozen components of ``module`` (and its DiT) as an official-layout release root."""
    module.dit.save_pretrained(str(root / "transformer"))
    module.vae.save_pretrained(root / "vae")
    module.text_encoder.save_pretrained(root)
    module.image_encoder.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny E2VDiffusion with an EMA that differs from its weights, its release root, and (raw, EMA) states."""
    torch.manual_seed(0)
    module = E2VDiffusion(text_encoder=TEXT)
    root = save_release(module, tmp_path_factory.mktemp("release"))
    ema = EMA(decay=0.5)
    ema._module = module
    ema._init_shadow(module)
    with torch.no_grad():
        for p in module.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ema.update(module)
    return module, root, ema


def export(checkpoint, out, *options):
    assert export_command([str(checkpoint), "--out", str(out), *options]) == 0


def exported_dit(out):
    return E2VPipeline.from_weights(out, solver={"name": "euler", "num_steps": 1}).dit


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_full_checkpoint_exports_what_generate_checkpoint_loads(trained, tmp_path, weights):
    module, root, ema = trained
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "callbacks": {ema.state_key: ema.state_dict()}}, path)
    export(path, tmp_path / "out", "--weights", weights, "--base", str(root), "--max-shard-gb", "0.00002")
    transformer = tmp_path / "out" / "transformer"
    assert len(json.loads((transformer / "diffusion_pytorch_model.safetensors.index.json").read_text())["weight_map"]) \
        == len(module.dit.state_dict())
    assert len(list(transformer.glob("*.safetensors"))) > 1
    expected = dit_output(E2VPipeline.from_checkpoint(path, ema=weights == "ema").dit)
    torch.testing.assert_close(dit_output(exported_dit(tmp_path / "out")), expected, rtol=0, atol=0)
    assert torch.equal(expected, dit_output(module.dit)) == (weights == "raw")  # raw: the module's own weights


def test_distributed_checkpoint_written_by_one_rank(trained, tmp_path):
    import torch.distributed.checkpoint as dcp

    module, root, ema = trained
    folder = tmp_path / "last.ckpt"
    dcp.save({"state_dict": module.state_dict()}, checkpoint_id=str(folder), no_dist=True)
    torch.save({"hyper_parameters": dict(module.hparams), "callbacks": {ema.state_key: ema.state_dict()}},
               folder / "meta.pt")
    export(folder, tmp_path / "out", "--base", str(root))  # default: the EMA
    reference = E2VDiffusion(text_encoder=TEXT).dit
    reference.load_state_dict({k.removeprefix("dit."): v for k, v in ema.state_dict()["shadow"].items()})
    torch.testing.assert_close(dit_output(exported_dit(tmp_path / "out")), dit_output(reference), rtol=0, atol=0)
    assert (tmp_path / "out" / "vae").resolve() == (root / "vae").resolve()


def test_errors_name_the_problem(trained, tmp_path, capsys):
    module, root, _ = trained
    path = tmp_path / "raw.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    assert export_command([str(path), "--out", str(tmp_path / "a"), "--weights", "ema", "--base", str(root)]) == 2
    assert "has no EMA weights" in capsys.readouterr().err
    state = {k: v for k, v in module.state_dict().items() if "blocks.1." not in k}
    torch.save({"state_dict": state, "hyper_parameters": dict(module.hparams)}, path)
    assert export_command([str(path), "--out", str(tmp_path / "b"), "--base", str(root)]) == 2
    assert "missing ['blocks.1." in capsys.readouterr().err
    assert not (tmp_path / "b" / "transformer").exists()


def test_a_tampered_spec_or_a_full_disk_leaves_one_line_and_no_partial_folder(trained, tmp_path, monkeypatch,
                                                                                capsys):
    """Issue 29 POOR: a tampered DiT spec gave a TypeError traceback; a full disk left ``.transformer.partial/``."""
    import errno
    import os

    from e2v.modules import weights as weights_module

    module, root, _ = trained
    path = tmp_path / "run.ckpt"
    hparams = dict(module.hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": {**hparams, "dit": {
        **dict(hparams.get("dit") or {"name": "wan"}), "num_layers": "many"}}}, path)
    assert export_command([str(path), "--out", str(tmp_path / "a"), "--base", str(root)]) == 2
    err = capsys.readouterr().err
    assert "cannot rebuild the checkpoint's DiT from its spec" in err and "Traceback" not in err
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams}, path)
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(weights_module, "save_file", full)
    assert export_command([str(path), "--out", str(tmp_path / "b"), "--base", str(root)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert not list((tmp_path / "b").glob(".transformer*")) and not (tmp_path / "b" / "transformer").exists()
