"""EMA callback: math vs a hand-computed reference, frozen params, checkpoint resume, validation swap."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from e2v.callbacks import EMA

torch.set_num_threads(1)


class TinyModule(pl.LightningModule):
    """A trainable linear layer next to a frozen one (stands in for a frozen VAE/encoder)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.net = torch.nn.Linear(4, 2)
        self.val_seen: list[tuple[int, dict]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(self.frozen(x)), y)

    def validation_step(self, batch, batch_idx):
        self.val_seen.append((self.trainer.global_step, _trainable(self)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.5)


def _trainable(module):
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


class RecordWeights(Callback):
    """Trainable weights at fit start and after every training batch."""

    def __init__(self):
        self.history: list[tuple[int, dict]] = []

    def on_fit_start(self, trainer, pl_module):
        self.history.append((trainer.global_step, _trainable(pl_module)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append((trainer.global_step, _trainable(pl_module)))


def _loader(size=16):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(size, 4, generator=g), torch.randn(size, 2, generator=g))
    return DataLoader(data, batch_size=2, shuffle=False)


def _trainer(tmp_path, callbacks, max_steps, **kwargs):
    return pl.Trainer(
        accelerator="cpu", max_steps=max_steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0, **kwargs,
    )


def _reference_ema(history, decay, update_every, start_step):
    """Hand EMA over the recorded weights: one update per new optimizer step that is a multiple of update_every."""
    ema = {n: t.clone() for n, t in history[0][1].items()}
    last = history[0][0]
    for step, weights in history[1:]:
        if step == last or step % update_every:
            continue
        last = step
        d = decay if step > start_step else 0.0
        ema = {n: d * ema[n] + (1 - d) * weights[n] for n in ema}
    return ema


@pytest.mark.parametrize("accumulate,update_every,start_step", [(1, 1, 0), (2, 2, 1)])
def test_ema_matches_hand_reference_and_skips_frozen(tmp_path, accumulate, update_every, start_step):
    model, record = TinyModule(), RecordWeights()
    ema = EMA(decay=0.8, update_every=update_every, start_step=start_step, use_for_validation=False)
    trainer = _trainer(tmp_path, [record, ema], max_steps=6, accumulate_grad_batches=accumulate)
    trainer.fit(model, train_dataloaders=_loader())
    assert set(ema.shadow) == {"net.weight", "net.bias"}  # the frozen layer is not tracked
    reference = _reference_ema(record.history, 0.8, update_every, start_step)
    for name in reference:
        torch.testing.assert_close(ema.shadow[name], reference[name], rtol=0, atol=1e-6)
    assert ema.num_updates == 6 // update_every
    assert not torch.equal(ema.shadow["net.weight"], model.net.weight)  # the EMA lags the weights


def test_validation_sees_ema_and_training_weights_come_back(tmp_path):
    model, record, ema = TinyModule(), RecordWeights(), EMA(decay=0.7)
    trainer = _trainer(tmp_path, [ema, record], max_steps=6, val_check_interval=3, limit_val_batches=1)
    trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader())
    assert [step for step, _ in model.val_seen] == [3, 6]
    for step, seen in model.val_seen:
        upto = [(s, w) for s, w in record.history if s <= step]
        reference = _reference_ema(upto, 0.7, 1, 0)
        for name in reference:
            torch.testing.assert_close(seen[name], reference[name], rtol=0, atol=1e-6)
    final = record.history[-1][1]
    for name, weight in _trainable(model).items():
        assert torch.equal(weight, final[name])  # training weights restored after validation
    with ema.swapped(model):
        torch.testing.assert_close(model.net.weight, ema._ema_values()["net.weight"], rtol=0, atol=0)
        assert not torch.equal(model.net.weight, final["net.weight"])
    assert torch.equal(model.net.weight, final["net.weight"])


def test_checkpoint_resume_gives_identical_ema(tmp_path):
    # one batch per epoch: a checkpoint at an epoch end resumes the same data order
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
    ema_full = EMA(decay=0.9)
    _trainer(tmp_path, [ema_full, ckpt], max_steps=6).fit(TinyModule(), train_dataloaders=_loader(2))
    path = tmp_path / "ckpt" / "epoch=2-step=3.ckpt"
    state = torch.load(path, weights_only=True)["callbacks"][ema_full.state_key]
    assert state["num_updates"] == 3 and set(state["shadow"]) == {"net.weight", "net.bias"}

    ema_resumed = EMA(decay=0.9)
    resumed = _trainer(tmp_path, [ema_resumed], max_steps=6)
    resumed.fit(TinyModule(), train_dataloaders=_loader(2), ckpt_path=path)
    assert ema_resumed.num_updates == 6
    for name in ema_full.shadow:
        assert torch.equal(ema_resumed.shadow[name], ema_full.shadow[name])


def test_apply_at_fit_end_keeps_ema_weights(tmp_path):
    model, ema = TinyModule(), EMA(decay=0.9, apply_at_fit_end=True)
    _trainer(tmp_path, [ema], max_steps=3).fit(model, train_dataloaders=_loader())
    assert torch.equal(model.net.weight, ema.shadow["net.weight"])


def test_checkpoint_of_another_model_is_refused(tmp_path):
    ema = EMA()
    ema._module = TinyModule()
    ema._init_shadow(ema._module)
    bad = {"shadow": {"other.weight": torch.zeros(1)}, "num_updates": 1, "last_step": 1}
    with pytest.raises(RuntimeError, match="does not match the module's trainable parameters"):
        ema.load_state_dict(bad)


def _fsdp2_worker(rank, world, port, cpu_offload, out_dir):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
        model[0].requires_grad_(False)
        fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
        ema = EMA(decay=0.75, cpu_offload=cpu_offload)
        ema._module = model
        ema._init_shadow(model)
        assert set(ema.shadow) == {"1.weight", "1.bias"}
        assert all(isinstance(e, DTensor) != cpu_offload for e in ema.shadow.values())
        full = lambda: {n: p.full_tensor().clone() for n, p in model.named_parameters() if p.requires_grad}
        start = full()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5).add_(1.0)  # stands in for an optimizer step on the local shards
        ema.update(model)
        reference = {n: 0.75 * start[n] + 0.25 * w for n, w in full().items()}
        state = ema.state_dict()  # full tensors, gathered one by one
        for name in reference:
            torch.testing.assert_close(state["shadow"][name], reference[name], rtol=0, atol=1e-6)
        with ema.swapped(model):
            assert torch.allclose(model[1].weight.full_tensor(), reference["1.weight"])
        assert torch.allclose(model[1].weight.full_tensor(), full()["1.weight"])
        resumed = EMA(decay=0.75, cpu_offload=cpu_offload)
        resumed._module = model
        resumed._init_shadow(model)
        resumed.load_state_dict(state)  # resharded locally, no communication
        again = resumed.state_dict()["shadow"]
        assert all(torch.equal(again[n], state["shadow"][n]) for n in state["shadow"])
        if rank == 0:
            (out_dir / f"ok_{cpu_offload}").write_text("ok")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("cpu_offload", [False, True])
def test_fsdp2_sharded_ema(tmp_path, cpu_offload):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_fsdp2_worker, args=(2, port, cpu_offload, tmp_path), nprocs=2, join=True)
    assert (tmp_path / f"ok_{cpu_offload}").exists()


def test_cpu_offload_updates_equal_on_device_ones(tmp_path):
    """cpu_offload starts each update (copies + lerp in a worker thread) and finishes it before any read: the EMA
    equals the on-device one at every validation swap and at the end."""
    results = {}
    for offload in (False, True):
        model, ema = TinyModule(), EMA(decay=0.7, cpu_offload=offload)
        trainer = _trainer(tmp_path, [ema], max_steps=5, val_check_interval=2, limit_val_batches=1)
        trainer.fit(model, train_dataloaders=_loader(), val_dataloaders=_loader())
        results[offload] = (model.val_seen, dict(ema.shadow), ema.num_updates)
    (seen, shadow, updates), (seen_offload, shadow_offload, updates_offload) = results[False], results[True]
    assert updates == updates_offload == 5 and shadow_offload["net.weight"].device.type == "cpu"
    for name in shadow:
        torch.testing.assert_close(shadow_offload[name], shadow[name], rtol=0, atol=1e-7)
    for (step, weights), (step_offload, weights_offload) in zip(seen, seen_offload, strict=True):
        assert step == step_offload
        for name in weights:
            torch.testing.assert_close(weights_offload[name], weights[name], rtol=0, atol=1e-7)
