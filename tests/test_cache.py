"""Latent cache: equals online encoding, refuses stale components, resumes after a killed run."""

import json

import pytest
import torch
from test_manifest import make_world

from e2v.datamodules.cache import LatentCache, StaleCacheError, build_cache
from e2v.datamodules.commands import cache_command
from e2v.datamodules.triplets import TripletDataModule
from e2v.modules.image_encoder import ImageEncoder
from e2v.modules.layouts import A2Layout
from e2v.modules.text_encoder import TextEncoder
from e2v.modules.vae import WanVAE

BUCKETS = [[9, 16, 32], [9, 32, 16]]
TEXT_LENGTH = 24


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    return dict(
        vae=WanVAE.from_preset("tiny").eval(),
        text_encoder=TextEncoder.from_preset("tiny", max_length=TEXT_LENGTH),
        image_encoder=ImageEncoder.from_preset("tiny"),
        layout=A2Layout(),
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return make_world(root, count=3, frames=10, refs=2, sizes=((24, 48), (48, 24)))


@pytest.fixture(scope="module")
def cli_cache(world, components, tmp_path_factory):
    """A cache written by `e2v cache` from registry specs (the tiny VAE is random: its weights go via a folder)."""
    root = tmp_path_factory.mktemp("cli_cache")
    components["vae"].save_pretrained(root / "vae")
    argv = [str(world), "--out", str(root / "cache"), "--layout", "a2",
            "--vae", json.dumps({"name": "wan", "weights": str(root / "vae")}),
            "--image-encoder", json.dumps({"name": "clip", "preset": "tiny"}),
            "--text-encoder", json.dumps({"name": "umt5", "preset": "tiny", "max_length": TEXT_LENGTH}),
            "--buckets", json.dumps(BUCKETS), "--records-per-shard", "2"]
    assert cache_command(argv) == 0
    return root / "cache"


def build(manifest, out, components, **kwargs):
    return build_cache(manifest, out, **components, buckets=BUCKETS, image_size=32, records_per_shard=2, **kwargs)


@torch.no_grad()
def test_cache_equals_online_encoding(world, cli_cache, components):
    vae, text_encoder, image_encoder, layout = components.values()
    settings = dict(buckets=BUCKETS, image_size=32, batch_size=1, shuffle_references=False)
    cached = TripletDataModule(str(world), cache_dir=str(cli_cache), **settings)
    online = TripletDataModule(str(world), **settings)
    cached_batches = {b["id"][0]: b for b in cached.train_dataloader()}
    online_batches = [b for b in online.train_dataloader()]
    assert sorted(cached_batches) == ["c0", "c1", "c2"]
    for batch in online_batches:
        hit = cached_batches[batch["id"][0]]
        x0 = vae.normalize(vae.encode(layout.target_video(batch["video"], batch["refs"])))
        condition = layout.condition(vae, batch["refs"], batch["video"].shape[2])
        text = text_encoder(batch["caption"])
        image = image_encoder(batch["refs_clip"])
        assert hit["latents"].shape == x0.shape == (1, 16, 3, *[s // 8 for s in batch["video"].shape[-2:]])
        assert hit["condition"].shape == condition.shape and condition.shape[1] == 20
        assert hit["text"].shape == (1, TEXT_LENGTH, text_encoder.dim) and hit["image"].shape == image.shape
        for name, expected in (("latents", x0), ("condition", condition), ("text", text), ("image", image)):
            torch.testing.assert_close(hit[name], expected, atol=1e-4, rtol=1e-4, msg=name)


def test_stale_cache_is_refused(world, cli_cache, components):
    cache = LatentCache(cli_cache)
    cache.check_components(*components.values())  # same components: accepted
    changed = WanVAE.from_preset("tiny").eval()
    with torch.no_grad():
        next(changed.parameters()).add_(1e-3)
    with pytest.raises(StaleCacheError, match="stale cache .* other vae"):
        cache.check_components(changed, components["text_encoder"], components["image_encoder"], components["layout"])
    with pytest.raises(StaleCacheError, match="other key"):
        build(world, cli_cache, {**components, "vae": changed})
    other_layout = {**components, "layout": A2Layout(reference_loss_weight=0.5)}
    with pytest.raises(StaleCacheError, match="other layout"):
        cache.check_components(*other_layout.values())
    dm = TripletDataModule(str(world), buckets=[[9, 16, 32]], image_size=32, cache_dir=str(cli_cache))
    with pytest.raises(StaleCacheError, match="buckets"):
        dm.setup("fit")


def test_killed_cache_run_resumes(world, tmp_path, components):
    out = tmp_path / "cache"

    def kill_after_first_shard(done, total):
        if done == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        build(world, out, components, on_shard=kill_after_first_shard)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard_00000.safetensors"]
    with pytest.raises(RuntimeError, match="incomplete .1 of 2 shards"):
        LatentCache(out)
    first_shard = (out / "shard_00000.safetensors").stat().st_mtime_ns
    (out / ".shard_00001.safetensors.tmp").write_bytes(b"half-written")  # a shard cut off mid-write
    progress = []
    cache = build(world, out, components, on_shard=lambda done, total: progress.append((done, total)))
    assert progress == [(2, 2)]  # only the missing shard was encoded
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first_shard
    assert not list(out.glob(".*.tmp"))
    assert [r["id"] for r in cache.records] == ["c0", "c1", "c2"]


def copy_cache(cache_dir, tmp_path):
    import shutil

    return shutil.copytree(cache_dir, tmp_path / "cache")


def test_deleted_shard_is_named_or_skipped_and_counted(cli_cache, tmp_path):
    """Issue 13: a deleted shard gave a FileNotFoundError mid-training naming no file."""
    from e2v.datamodules.cache import CacheError, CachedTripletDataset
    from e2v.datamodules.samples import Skipped

    out = copy_cache(cli_cache, tmp_path)
    dataset = CachedTripletDataset(LatentCache(out))
    (out / "shard_00001.safetensors").unlink()  # deleted while a run holds the cache open
    skipped = dataset[2]
    assert isinstance(skipped, Skipped) and skipped.reason == "corrupt_cache" and "shard_00001" in skipped.message
    assert not isinstance(dataset[0], Skipped)
    with pytest.raises(CacheError, match="shard_00001.safetensors"):
        LatentCache(out)  # the next run is told which file is gone


def test_damaged_index_and_orphan_temp_files(cli_cache, world, tmp_path, components):
    """Issue 13: a truncated index.json gave a bare JSONDecodeError; a killed index write left its temp file."""
    from e2v.datamodules.cache import CacheError

    out = copy_cache(cli_cache, tmp_path)
    index = (out / "index.json").read_text()
    (out / "index.json").write_text(index[: len(index) // 2])
    with pytest.raises(CacheError, match="index.json is damaged"):
        LatentCache(out)
    with pytest.raises(CacheError, match="index.json is damaged"):
        build(world, out, components)
    (out / "index.json").write_text(index)
    orphan = out / ".index.json.k1ll3d.tmp"
    orphan.write_text('{"half": ')
    assert len(build(world, out, components).records) == 3  # the complete cache opens as it was
    assert not orphan.exists()


@pytest.mark.parametrize("option", ["--vae", "--text-encoder", "--image-encoder", "--layout", "--buckets"])
def test_cache_command_bad_json_exits_2_naming_the_option(world, tmp_path, option, capsys):
    argv = {"--vae": "wan", "--text-encoder": "umt5", option: "{bad json"}
    args = [str(world), "--out", str(tmp_path / "c")] + [x for kv in argv.items() for x in kv]
    with pytest.raises(SystemExit) as exit_info:
        cache_command(args)
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_cache_command_unknown_component_exits_2(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cache_command([str(world), "--out", str(tmp_path / "c"), "--vae", "nope", "--text-encoder", "umt5"])
    assert exit_info.value.code == 2 and "no vae named 'nope'" in capsys.readouterr().err


def test_cache_command_from_a_family(world, cli_cache, tmp_path):
    """`--family tiny` gives the VAE, encoders and layout; the specs given lay options over them: the same cache key
    as the explicit specs of the module fixture."""
    explicit = json.loads((cli_cache / "index.json").read_text())["key"]
    vae_folder = cli_cache.parent / "vae"
    argv = [str(world), "--out", str(tmp_path / "cache"), "--family", "tiny",
            "--vae", json.dumps({"name": "wan", "weights": str(vae_folder)}),
            "--text-encoder", json.dumps({"name": "umt5", "max_length": TEXT_LENGTH}),
            "--buckets", json.dumps(BUCKETS), "--records-per-shard", "2"]
    assert cache_command(argv) == 0
    assert json.loads((tmp_path / "cache" / "index.json").read_text())["key"] == explicit


def _shard_tensors(out):
    from safetensors.torch import load_file

    return {f"{shard.name}:{k}": v for shard in sorted(out.glob("shard_*.safetensors")) for k, v in load_file(shard).items()}


def _index_without_paths(out):
    index = json.loads((out / "index.json").read_text())
    return {k: v for k, v in index.items() if k != "manifest"}


def test_batched_cache_equals_one_at_a_time(world, tmp_path, components, monkeypatch):
    """Records of a shard are encoded in batches of a bucket and reference count: same records, same numbers."""
    import e2v.datamodules.cache as cache_module

    sizes, encode = [], cache_module.encode_samples
    monkeypatch.setattr(cache_module, "encode_samples", lambda samples, *a, **k: sizes.append(len(samples)) or
                        encode(samples, *a, **k))
    settings = dict(**components, buckets=BUCKETS, image_size=32, records_per_shard=4)
    single = build_cache(world, tmp_path / "single", **settings, batch_size=1)
    assert sizes == [1, 1, 1]
    sizes.clear()
    batched = build_cache(world, tmp_path / "batched", **settings, batch_size=4)
    assert sorted(sizes) == [1, 2]  # c0 and c2 share a bucket (and reference count): one batch
    assert [r["id"] for r in batched.records] == [r["id"] for r in single.records] == ["c0", "c1", "c2"]
    assert _index_without_paths(tmp_path / "batched") == _index_without_paths(tmp_path / "single")
    one, many = _shard_tensors(tmp_path / "single"), _shard_tensors(tmp_path / "batched")
    assert one.keys() == many.keys()
    for name in one:
        torch.testing.assert_close(many[name], one[name], atol=1e-5, rtol=1e-5, msg=name)


def test_two_ranks_split_the_shards_and_rank0_writes_the_same_index(world, tmp_path, components):
    """Rank 1 encodes shard 1 while rank 0 encodes shard 0, then rank 0 finds rank 1's shard by polling the folder and
    writes the index: the same index and tensors as a 1-rank build."""
    import threading

    reference = tmp_path / "one_rank"
    build(world, reference, components, batch_size=2)
    out, results = tmp_path / "two_ranks", {}
    seen = []

    def rank(r):
        results[r] = build(world, out, components, batch_size=2, rank=r, world_size=2, poll_seconds=0.05,
                           on_shard=lambda done, total: seen.append((r, done, total)))

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results[1] is None and [r["id"] for r in results[0].records] == ["c0", "c1", "c2"]
    assert sorted(r for r, _, _ in seen) == [0, 1]  # one shard each
    assert _index_without_paths(out) == _index_without_paths(reference)
    expected, got = _shard_tensors(reference), _shard_tensors(out)
    assert expected.keys() == got.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("augmentation", [{"shuffle_references": True}, {"reference_dropout_count": 0.3}])
def test_cached_mode_refuses_reference_augmentation(world, cli_cache, augmentation):
    """The cache holds each clip once with all its references in order: the A2 order/count augmentation cannot be
    applied to it, so asking for it with cache_dir is an error naming the keys (it used to be ignored silently)."""
    with pytest.raises(ValueError, match="shuffle_references=.* reference_dropout_count=.* cache_dir="):
        TripletDataModule(str(world), buckets=BUCKETS, image_size=32, cache_dir=str(cli_cache), **augmentation)
    assert not TripletDataModule(str(world), buckets=BUCKETS, image_size=32, cache_dir=str(cli_cache)).shuffle_references
    assert TripletDataModule(str(world), buckets=BUCKETS, image_size=32).shuffle_references  # online default: on


def test_datamodule_builds_the_cache_with_the_module_components(world, tmp_path, components):
    """fit's cache build: the module's own components, on the trainer's device, then moved back; rank 0 of 1."""
    import lightning as L

    module = torch.nn.Module()
    module.vae, module.text_encoder, module.image_encoder = (components[k] for k in ("vae", "text_encoder", "image_encoder"))
    module.layout = components["layout"]
    dm = TripletDataModule(str(world), buckets=BUCKETS, image_size=32, cache_dir=str(tmp_path / "cache"),
                           cache_batch_size=2)
    dm.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    dm._build_cache(module)
    cache = LatentCache(tmp_path / "cache")
    assert [r["id"] for r in cache.records] == ["c0", "c1", "c2"]
    cache.check_components(*components.values())


def test_layout_swap_says_what_to_do_and_rebuild_replaces_the_cache(world, cli_cache, tmp_path, capsys):
    """A cache of another layout is one message naming the fix (new cache_dir or --rebuild); --rebuild builds it
    anew with the current components, and refuses to delete a folder that holds no cache."""
    import shutil

    out = tmp_path / "cache"
    shutil.copytree(cli_cache, out)
    vae = json.dumps({"name": "wan", "weights": str(cli_cache.parent / "vae")})
    argv = [str(world), "--out", str(out), "--layout", '{"name": "a2", "repeat": false}', "--vae", vae,
            "--image-encoder", json.dumps({"name": "clip", "preset": "tiny"}),
            "--text-encoder", json.dumps({"name": "umt5", "preset": "tiny", "max_length": TEXT_LENGTH}),
            "--buckets", json.dumps(BUCKETS), "--records-per-shard", "2"]
    old_key = json.loads((out / "index.json").read_text())["key"]
    assert cache_command(argv) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a cache with another key" in err and "--data.init_args.cache_dir NEW_DIR" in err
    assert "--rebuild" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cache_command([*argv, "--rebuild"]) == 0
    assert json.loads((out / "index.json").read_text())["key"] != old_key
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        cache_command([*argv[:1], "--out", str(tmp_path / "notes"), *argv[3:], "--rebuild"])
    assert (tmp_path / "notes" / "keep.txt").is_file()


@torch.no_grad()
def test_a_complete_cache_is_used_without_writing(world, tmp_path, components, monkeypatch):
    """Issue 29 POOR: a complete cache on a read-only file system failed because index.json was rewritten."""
    import errno

    from e2v.datamodules import cache as cache_module

    out = tmp_path / "cache"
    build(world, out, components)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(cache_module, "write_json_atomic", read_only)
    monkeypatch.setattr(cache_module, "save_file", read_only)
    cache = build(world, out, components)
    assert [r["id"] for r in cache.records] == ["c0", "c1", "c2"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
