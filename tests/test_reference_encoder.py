"""Reference encoder: ReferenceViT, InfoNCE, retrieval metrics, element views, training and checkpoint loading."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from e2v import registry
from e2v.datamodules.element_views import ElementViewsDataModule
from e2v.modules.reference_vit import ReferenceViT, ReferenceViTConfig
from e2v.modules.weights import CheckpointError
from e2v.tasks.reference_encoder_training import ReferenceEncoderTraining, info_nce, retrieval_metrics

TINY = {"name": "e2v_vit", "image_size": 32, "patch_size": 8, "width": 32, "depth": 2, "heads": 4, "dim": 24,
        "embed_dim": 16}


def images(batch: int = 2, refs: int = 3, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, refs, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_info_nce_matches_hand_computation():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]]), dim=-1)
    t = 0.5
    sim = [[sum(x * y for x, y in zip(a[i].tolist(), b[j].tolist())) / t for j in range(3)] for i in range(3)]
    row = [-(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i]))) for i in range(3)]
    col = [-(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(3)))) for j in range(3)]
    expected = (sum(row) / 3 + sum(col) / 3) / 2
    assert info_nce(a, b, t).item() == pytest.approx(expected, rel=1e-5)

    # pairs 0 and 2 are the same element: each drops the other from its negatives (row and column)
    labels = torch.tensor([7, 3, 7])
    row[0] = -(sim[0][0] - math.log(math.exp(sim[0][0]) + math.exp(sim[0][1])))
    row[2] = -(sim[2][2] - math.log(math.exp(sim[2][1]) + math.exp(sim[2][2])))
    col[0] = -(sim[0][0] - math.log(math.exp(sim[0][0]) + math.exp(sim[1][0])))
    col[2] = -(sim[2][2] - math.log(math.exp(sim[1][2]) + math.exp(sim[2][2])))
    expected = (sum(row) / 3 + sum(col) / 3) / 2
    assert info_nce(a, b, t, labels).item() == pytest.approx(expected, rel=1e-5)


def test_retrieval_metrics_and_chance():
    keys = torch.eye(4)
    queries = torch.tensor([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.9, 0.5], [0, 0, 0, 1.0]])
    metrics = retrieval_metrics(queries, keys, torch.tensor([0, 1, 2, 3]), ks=(1, 2))
    assert metrics["top1"] == 0.75  # query 1 finds key 2 first, its own key ties last
    assert metrics["top2"] == 0.75
    assert metrics["chance_top1"] == pytest.approx(0.25)
    assert metrics["chance_top2"] == pytest.approx(0.5)
    # two keys per element among 4: chance top-1 = 2/4, top-2 = 1 - C(2,2)/C(4,2)
    metrics = retrieval_metrics(queries, keys, torch.tensor([0, 0, 1, 1]), ks=(1, 2))
    assert metrics["chance_top1"] == pytest.approx(0.5)
    assert metrics["chance_top2"] == pytest.approx(1 - 1 / 6)


def test_reference_vit_interface_and_resampler():
    encoder = registry.build("image_encoder", TINY)
    x = images()
    assert encoder.tokens_per_image == (32 // 8) ** 2 + 1
    assert encoder(x).shape == (2, 3 * encoder.tokens_per_image, 24)
    pooled = encoder.pooled(x)
    assert pooled.shape == (2, 3, 16)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2, 3))
    # references are encoded independently: swapping two references swaps their tokens
    tokens = encoder(x).unflatten(1, (3, -1))
    swapped = encoder(x[:, [1, 0, 2]]).unflatten(1, (3, -1))
    torch.testing.assert_close(swapped[:, 0], tokens[:, 1], rtol=1e-4, atol=1e-5)

    resampled = registry.build("image_encoder", {**TINY, "tokens_per_image": 4})
    assert resampled(x).shape == (2, 12, 24) and resampled.tokens_per_image == 4
    with pytest.raises(ValueError, match=r"\[B, N, 3, 32, 32\]"):
        encoder(torch.zeros(2, 3, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ReferenceViTConfig(image_size=30, patch_size=8)


def test_element_views_split_and_batches():
    data = ElementViewsDataModule(image_size=32, batch_size=6, samples_per_epoch=12, val_pairs_per_element=2)
    data.setup("fit")
    train_names = {item.name for item in data.train_items}
    heldout_names = {item.name for item in data.heldout_items}
    assert train_names.isdisjoint(heldout_names) and len(heldout_names) >= 2
    assert {item.kind for item in data.heldout_items} >= {"background", "object"}

    batch = next(iter(data.train_dataloader()))
    assert batch["views"].shape == (6, 2, 3, 32, 32)
    assert batch["views"].min() >= -1 and batch["views"].max() <= 1
    assert set(batch["name"]) <= train_names
    assert not torch.equal(batch["views"][:, 0], batch["views"][:, 1])  # two different views
    subject = [i for i, kind in enumerate(batch["kind"]) if kind != "background"][0]
    corners = batch["views"][subject, :, :, 0, 0]  # subjects sit on white: most corners are white
    assert (corners == 1).any()

    first, second = (next(iter(data.val_dataloader())) for _ in range(2))
    torch.testing.assert_close(first["views"], second["views"])  # deterministic validation set
    assert set(first["name"]) <= heldout_names


def tiny_trainer(tmp_path, steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, default_root_dir=tmp_path, **kwargs,
    )


def test_training_smoke_checkpoint_reload_and_mismatch(tmp_path):
    torch.manual_seed(0)
    data = ElementViewsDataModule(image_size=32, batch_size=8, samples_per_epoch=16, val_pairs_per_element=2)
    model = ReferenceEncoderTraining(TINY, text_alignment=0.5, export_dir=str(tmp_path / "exported"))
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = tiny_trainer(tmp_path, 2, callbacks=[checkpoint], limit_val_batches=1)
    trainer.fit(model, data)
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert 0 <= trainer.callback_metrics["val/top1"].item() <= 1

    model.eval()
    x = images()
    expected = model.encoder.pooled(x)
    last = tmp_path / "ckpt" / "last.ckpt"
    # the checkpoint alone rebuilds the encoder (config stored in it); loaded encoders are frozen
    reloaded = registry.build("image_encoder", {"name": "e2v_vit", "checkpoint": str(last)})
    torch.testing.assert_close(reloaded.pooled(x), expected)
    assert not any(p.requires_grad for p in reloaded.parameters())
    exported = registry.build("image_encoder", {"name": "e2v_vit", "checkpoint": str(tmp_path / "exported")})
    torch.testing.assert_close(exported(x), model.encoder(x))
    single = tmp_path / "encoder.safetensors"
    save_file(model.encoder.state_dict(), str(single))
    options = {k: v for k, v in TINY.items() if k != "name"}
    from_file = registry.build("image_encoder", {"name": "e2v_vit", "checkpoint": str(single), **options})
    torch.testing.assert_close(from_file.pooled(x), expected)

    with pytest.raises(CheckpointError, match=r"(?s)wrong shape.*width.*\(32, 64\)"):
        registry.build("image_encoder", {"name": "e2v_vit", "checkpoint": str(last), "width": 64})
    with pytest.raises(CheckpointError, match="does not exist"):
        registry.build("image_encoder", {"name": "e2v_vit", "checkpoint": str(tmp_path / "nope.ckpt")})


def held_out_metrics(model: ReferenceEncoderTraining, data: ElementViewsDataModule, tmp_path) -> dict[str, float]:
    return tiny_trainer(tmp_path, 1).validate(model, data, verbose=False)[0]


@pytest.mark.slow
def test_training_beats_random_init_on_heldout_retrieval(tmp_path):
    L.seed_everything(0)
    data = ElementViewsDataModule(
        image_size=32, batch_size=32, samples_per_epoch=100_000, val_pairs_per_element=8, procedural_identities=1000
    )
    encoder = {**TINY, "width": 64, "depth": 3, "embed_dim": 64}
    model = ReferenceEncoderTraining(encoder, optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05), warmup_steps=30)
    untrained = held_out_metrics(model, data, tmp_path)
    tiny_trainer(tmp_path, 400, limit_val_batches=0).fit(model, data)
    trained = held_out_metrics(model, data, tmp_path)
    print(f"held-out top-1: trained {trained['val/top1']:.3f} vs random init {untrained['val/top1']:.3f} "
          f"vs chance {trained['val/chance_top1']:.3f}")
    assert trained["val/top1"] > untrained["val/top1"]
    assert trained["val/loss"] < untrained["val/loss"] - 0.2


def test_open_element_views_train_on_one_part_and_validate_on_the_zero_shot_part():
    data = ElementViewsDataModule(image_size=32, batch_size=4, samples_per_epoch=8, val_pairs_per_element=1,
                                  elements="open", open_identities=12)
    data.setup()
    train = {item.name.split(":")[0] for item in data.train_items}
    held = {item.name.split(":")[0] for item in data.heldout_items}
    assert train == {"train"} and held == {"zeroshot"}
    assert len(data.train_items) == 12 + 3 and len(data.heldout_items) == 64 + 16
    batch = next(iter(data.train_dataloader()))
    assert batch["views"].shape == (4, 2, 3, 32, 32)
