"""TripletDataModule: decoding, bucket batching, resumable data position, skipping bad records."""

import pytest
import torch
from test_manifest import add_bad_records, make_clip, make_world

from e2v.datamodules.sampler import BucketBatchSampler
from e2v.datamodules.triplets import SkipLimitError, TripletDataModule


def epoch_batches(dm: TripletDataModule, loader=None) -> list[dict]:
    """Iterate one epoch the way the training loop does (the datamodule hook sees every batch)."""
    return [dm.on_before_batch_transfer(batch, 0) for batch in (loader or dm.train_dataloader())]


def ids(batches) -> list[list[str]]:
    return [batch["id"] for batch in batches]


def test_decodes_clips_and_references_into_the_bucket(tmp_path):
    manifest = make_world(tmp_path, count=2, frames=12, sizes=((32, 48),))
    source = make_clip(tmp_path / "clips" / "c0.mp4", 12, 32, 48, seed=0)  # same content as c0
    dm = TripletDataModule(str(manifest), frames=5, height=32, width=32, batch_size=2, image_size=16,
                           shuffle_references=False)
    (batch,) = epoch_batches(dm)
    assert batch["video"].shape == (2, 3, 5, 32, 32) and batch["refs"].shape == (2, 2, 3, 32, 32)
    assert batch["refs_clip"].shape == (2, 2, 3, 16, 16)
    assert batch["ref_kinds"] == [["object", "background"]] * 2 and batch["skipped"] == []
    i = batch["id"].index("c0")
    expected = source[:5, :, 8:40].permute(3, 0, 1, 2).float() / 127.5 - 1  # centre crop 48 -> 32
    assert (batch["video"][i] - expected).abs().mean() < 0.03
    assert batch["caption"][i] == "clip 0"
    # the object reference (20x16) is white-padded to the frame: its side columns are white
    assert torch.all(batch["refs"][i, 0, :, :, :3] == 1)


def test_buckets_never_mix_and_every_sample_is_seen_once(tmp_path):
    manifest = make_world(tmp_path, count=10, frames=12, refs=3)
    dm = TripletDataModule(str(manifest), buckets=[[5, 32, 48], [5, 48, 32], [9, 16, 16]], batch_size=3,
                           image_size=16, reference_dropout_count=0.7, min_references=1, seed=3)
    for epoch in range(2):
        batches = epoch_batches(dm)
        seen = [i for batch in batches for i in batch["id"]]
        assert sorted(seen) == sorted(f"c{i}" for i in range(10))
        for batch in batches:
            landscape = {int(i[1:]) % 2 == 0 for i in batch["id"]}
            assert len(landscape) == 1  # the aspect decides the bucket
            assert batch["video"].shape[-2:] == ((32, 48) if landscape.pop() else (48, 32))
            assert batch["video"].shape[2] == 5 and batch["refs"].shape[:2] == (len(batch["id"]), len(batch["ref_kinds"][0]))
    counts = {len(kinds) for batch in batches for kinds in batch["ref_kinds"]}
    assert len(counts) > 1  # the random count augmentation varies N


def test_sampler_plan_is_deterministic_and_sharded():
    sampler = BucketBatchSampler([0, 1] * 7, [2] * 14, batch_size=3, seed=5, reference_dropout_count=0.5)
    assert sampler.plan(0) == sampler.plan(0) and sampler.plan(0) != sampler.plan(1)
    ranks = [BucketBatchSampler([0, 1] * 7, [2] * 14, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    plans = [r.plan(0) for r in ranks]
    assert len(plans[0]) == len(plans[1])
    covered = {key.index for plan in plans for batch in plan for key in batch}
    assert covered == set(range(14))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_remaining_batches(tmp_path, num_workers):
    manifest = make_world(tmp_path, count=8, frames=6)
    kwargs = dict(frames=5, height=16, width=16, batch_size=2, image_size=16, num_workers=num_workers, seed=11)
    reference = TripletDataModule(str(manifest), **kwargs)
    full = [ids(epoch_batches(reference)) for _ in range(2)]

    first = TripletDataModule(str(manifest), **kwargs)
    epoch_batches(first)  # epoch 0
    loader = iter(first.train_dataloader())
    consumed = [first.on_before_batch_transfer(next(loader), 0)["id"] for _ in range(2)]
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_done": 2, "seed": 11}
    del loader

    resumed = TripletDataModule(str(manifest), **kwargs)
    resumed.load_state_dict(state)
    assert consumed + ids(epoch_batches(resumed)) == full[1]
    assert resumed.state_dict()["epoch"] == 1 and ids(epoch_batches(resumed)) != []  # next epoch starts over


def test_bad_records_are_skipped_and_counted(tmp_path):
    manifest = make_world(tmp_path, count=3, frames=12)
    add_bad_records(tmp_path, manifest)
    dm = TripletDataModule(str(manifest), frames=5, height=16, width=16, batch_size=4, image_size=16,
                           max_skip_fraction=1.0, min_references=1)
    dm.setup("fit")
    # found before training: parse errors, missing files, undecodable headers, too-short clips
    assert dm.skip_counts == {"bad_json": 1, "missing_keys": 1, "missing_video": 1, "missing_reference": 1,
                              "corrupt_video": 2, "too_short": 1}
    (tmp_path / "clips" / "c1.mp4").unlink()  # disappears after the check: skipped while loading
    batches = epoch_batches(dm)
    loaded = sorted(i for batch in batches for i in batch["id"])
    assert loaded == ["c0", "c2"]
    assert dm.skip_counts["unreadable_image"] == 1 and dm.skip_counts["missing_video"] == 2
    assert sum(len(batch["skipped"]) for batch in batches) == 2
    assert dm.skip_fraction == pytest.approx(9 / 11)  # 8 bad lines + c1


def test_too_many_bad_records_stop_with_a_clear_error(tmp_path):
    manifest = make_world(tmp_path, count=3, frames=12)
    add_bad_records(tmp_path, manifest)
    dm = TripletDataModule(str(manifest), frames=5, height=16, width=16, max_skip_fraction=0.5)
    with pytest.raises(SkipLimitError, match=r"max_skip_fraction 50\.0%.*e2v data check"):
        dm.setup("fit")


def test_bad_samples_while_training_stop_past_the_limit(tmp_path):
    manifest = make_world(tmp_path, count=4, frames=6)
    dm = TripletDataModule(str(manifest), frames=5, height=16, width=16, batch_size=1, image_size=16,
                           max_skip_fraction=0.3)
    dm.setup("fit")
    for i in range(2):
        (tmp_path / "clips" / f"c{i}.mp4").unlink()
    with pytest.raises(SkipLimitError, match="2 of 4 records are bad"):
        epoch_batches(dm)


def test_lightning_resume_continues_at_the_checkpointed_data_position(tmp_path):
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append(batch["id"])
            return (batch["video"].mean() - self.weight) ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    manifest = make_world(tmp_path, count=8, frames=6)
    kwargs = dict(frames=5, height=16, width=16, batch_size=2, image_size=16, seed=4)

    def fit(max_steps, ckpt_path=None):
        model, dm = Recorder(), TripletDataModule(str(manifest), **kwargs)
        trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
        return model.seen, trainer

    uninterrupted, _ = fit(7)  # 4 batches per epoch: crosses an epoch boundary
    first, trainer = fit(3)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    assert torch.load(tmp_path / "mid.ckpt", weights_only=False)["TripletDataModule"]["batches_done"] == 3
    resumed, _ = fit(7, ckpt_path=tmp_path / "mid.ckpt")
    assert first + resumed == uninterrupted
