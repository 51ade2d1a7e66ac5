"""Distillation tasks (ode, dmd) on a tiny random teacher, and the student's schedule travelling with the model."""

import json

import lightning as L
import pytest
import torch

from e2v.pipeline.sampling import SETTINGS_FILE, read_saved, resolve
from e2v.tasks.distill import DMDDistillation, ODEDistillation
from e2v.tasks.e2v_diffusion import E2VDiffusion

TEXT = {"name": "umt5", "preset": "tiny", "max_length": 8}
SCHEDULE = dict(timesteps=[1000, 750, 500, 250], shift=5.0, teacher_steps=8, teacher_guidance=3.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny random E2VDiffusion checkpoint and a cached batch (2 clips, 1 reference, 5 frames, 16 px)."""
    torch.manual_seed(0)
    module = E2VDiffusion(text_encoder=TEXT)
    path = tmp_path_factory.mktemp("teacher") / "teacher.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    g = torch.Generator().manual_seed(0)
    online = {"video": torch.rand(2, 3, 5, 16, 16, generator=g) * 2 - 1,
              "refs": torch.rand(2, 1, 3, 16, 16, generator=g) * 2 - 1,
              "refs_clip": torch.rand(2, 1, 3, 32, 32, generator=g) * 2 - 1, "caption": ["a red star", "a cat"]}
    inputs = module.encode_batch(online)
    batch = {"latents": inputs["x0"], "condition": inputs["condition"], "text": inputs["text"], "image": inputs["image"]}
    return path, batch


class Batches(torch.utils.data.Dataset):
    def __init__(self, batch, count):
        self.batch, self.count = batch, count

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return self.batch


def fit(module, batch, steps, root=None, ckpt_path=None, callbacks=()):
    loader = torch.utils.data.DataLoader(Batches(batch, 1000), batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks),
                        enable_checkpointing=any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks),
                        default_root_dir=root, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


@torch.no_grad()
def student_sample(module, inputs, noise):
    """The student's 4-step Euler sample (no guidance)."""
    x, sigmas = noise, module.student_sigmas
    for i in range(len(sigmas) - 1):
        index = torch.full((x.shape[0],), i)
        x = x + (sigmas[i + 1] - sigmas[i]) * module.student_velocity(x, index, inputs)
    return x


@torch.no_grad()
def teacher_sample(module, inputs, noise, sigmas):
    """The teacher with CFG on the given sigma schedule (Euler)."""
    x = noise
    for now, nxt in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        x = x + (nxt - now) * module.guided_velocity(module.teacher, x, torch.full((x.shape[0],), now), inputs, 3.0)
    return x


def test_ode_student_at_4_steps_is_closer_to_the_teacher_than_the_teacher_at_4_steps(teacher):
    path, batch = teacher
    torch.manual_seed(0)
    student = ODEDistillation(teacher=str(path), **SCHEDULE,
                              optimizer=lambda p: torch.optim.Adam(p, lr=3e-4))
    fit(student, batch, steps=50)
    student.eval()
    inputs = student.encode_batch(batch)
    noise = torch.randn(inputs["x0"].shape, generator=torch.Generator().manual_seed(123))
    many = student.teacher_trajectory(inputs, noise)[-1]  # the teacher's many-step CFG output
    naive = teacher_sample(student, inputs, noise, student.student_sigmas)
    distilled = student_sample(student, inputs, noise)
    naive_error, student_error = (naive - many).pow(2).mean(), (distilled - many).pow(2).mean()
    assert student_error < naive_error, (student_error, naive_error)
    # the teacher never trains and is left out of the student's checkpoint
    assert not any(p.requires_grad for p in student.teacher.parameters())
    assert not any(k.startswith("teacher.") for k in student.state_dict())


class Snapshots(L.Callback):
    """The student's, the critic's and the teacher's weights after every batch."""

    def __init__(self):
        self.after = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        copy = lambda m: [p.detach().clone() for p in m.parameters()]  # noqa: E731
        self.after.append((trainer.global_step, copy(module.dit), copy(module.critic), copy(module.teacher)))


def changed(before, after):
    return any(not torch.equal(a, b) for a, b in zip(before, after))


def test_dmd_updates_student_and_critic_on_schedule_and_leaves_the_teacher_alone(teacher):
    path, batch = teacher
    torch.manual_seed(0)
    module = DMDDistillation(teacher=str(path), **SCHEDULE, critic_steps=2)
    start = [[p.detach().clone() for p in m.parameters()] for m in (module.dit, module.critic, module.teacher)]
    snapshots = Snapshots()
    fit(module, batch, steps=6, callbacks=[snapshots])
    steps = [step for step, *_ in snapshots.after]
    assert steps == [2, 3, 5, 6]  # batch 0: student + critic, batch 1: critic, batch 2: student + critic, ...
    previous = start
    for (_, student, critic, frozen), student_due in zip(snapshots.after, [True, False, True, False]):
        assert changed(previous[0], student) == student_due
        assert changed(previous[1], critic)
        assert all(torch.equal(a, b) for a, b in zip(start[2], frozen))  # bit-identical
        previous = (student, critic, frozen)


def test_ode_resume_equals_the_uninterrupted_run(teacher, tmp_path):
    path, batch = teacher

    def run(root, steps, ckpt_path=None):
        torch.manual_seed(0)
        module = ODEDistillation(teacher=str(path), **SCHEDULE)
        saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=2)
        fit(module, batch, steps, root=root, ckpt_path=ckpt_path, callbacks=[saver])
        return module

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    resumed = run(tmp_path / "part", 4, ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    for (name, a), b in zip(full.dit.state_dict().items(), resumed.dit.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_schedule_round_trips_through_checkpoint_export_and_generate(teacher, tmp_path, capsys):
    from e2v.datamodules.video_io import probe_video, save_image
    from e2v.export import export_checkpoint
    from e2v.pipeline.generate import generate_command

    path, batch = teacher
    module = ODEDistillation(teacher=str(path), **SCHEDULE)
    saver = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    fit(module, batch, steps=1, callbacks=[saver])
    checkpoint = tmp_path / "last.ckpt"
    saved = read_saved(checkpoint)
    expected = [1000.0, 1000 * 5 * 0.75 / (1 + 4 * 0.75), 1000 * 5 * 0.5 / (1 + 4 * 0.5), 1000 * 5 * 0.25 / 2]
    assert saved["solver"] == "euler" and saved["steps"] == 4 and saved["guidance"] == 1.0
    assert saved["timesteps"] == pytest.approx(expected)
    export_checkpoint(checkpoint, tmp_path / "export")
    assert json.loads((tmp_path / "export" / SETTINGS_FILE).read_text()) == saved
    assert resolve(read_saved(tmp_path / "export"), {}).settings.timesteps == pytest.approx(expected)
    # generate with no sampling flags samples the student's schedule; --steps leaves it with a warning
    for i in range(2):
        save_image(tmp_path / f"ref{i}.png", torch.rand(3, 16, 16) * 2 - 1)
    args = ["--checkpoint", str(checkpoint), "--ref", str(tmp_path / "ref0.png"), "--ref", str(tmp_path / "ref1.png"),
            "--prompt", "a cat", "--height", "16", "--width", "16", "--frames", "4", "--no-progress"]
    assert generate_command(args + ["--out", str(tmp_path / "a.mp4")]) == 0
    out, err = capsys.readouterr()
    assert "solver euler (model)" in out and "steps 4 (model)" in out and "guidance 1 (model)" in out
    assert "timesteps [1000.0, 937.5, 833.3, 625.0] (model)" in out and "warning" not in err
    assert probe_video(tmp_path / "a.mp4")["frames"] == 4
    assert generate_command(args + ["--steps", "8", "--out", str(tmp_path / "b.mp4")]) == 0
    out, err = capsys.readouterr()
    assert "steps 8 (flag)" in out and "timesteps" not in out
    assert "--steps 8 leaves the trained schedule" in err


class CachedBatches(L.LightningDataModule):
    """The teacher fixture's cached batch, repeated (a datamodule the ``e2v fit`` command can build)."""

    batch = None

    def train_dataloader(self):
        return torch.utils.data.DataLoader(Batches(CachedBatches.batch, 1000), batch_size=None)


@pytest.mark.parametrize("task", ["ODEDistillation", "DMDDistillation"])
def test_distillation_through_the_command_saves_the_students_schedule(teacher, tmp_path, monkeypatch, task):
    """LightningCLI saves only the task's own arguments as hyper-parameters: those the distillation tasks fix for
    E2VDiffusion (the student's solver, the dropouts) must still be there when a checkpoint is written."""
    import yaml

    from e2v.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path, batch = teacher
    CachedBatches.batch = batch
    recipe = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 2, "logger": False, "enable_progress_bar": False,
                    "default_root_dir": str(tmp_path / "run"), "limit_val_batches": 0,
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                   "init_args": {"save_last": True}}]},
        "model": {"class_path": f"e2v.tasks.distill.{task}",
                  "init_args": {"teacher": str(path), **SCHEDULE, "teacher_steps": 4}},
        "data": {"class_path": f"{__name__}.CachedBatches"},
    }
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe))
    assert main(["distill", "--config", str(config)]) == 0  # e2v fit, with the recipe checked first
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = read_saved(checkpoint)
    assert saved["solver"] == "euler" and saved["steps"] == 4 and saved["guidance"] == 1.0
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["sample_solver"]["num_steps"] == 4 and hparams["text_dropout"] == 0.0


def test_distill_command_refuses_what_is_not_a_distillation_before_building_anything(teacher, tmp_path, capsys):
    import yaml

    from e2v.cli import main

    path, _ = teacher
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"model": {"class_path": "e2v.tasks.e2v_diffusion.E2VDiffusion"}}))
    assert main(["distill", "--config", str(plain)]) == 2
    assert "model.class_path is 'e2v.tasks.e2v_diffusion.E2VDiffusion', not a distillation task" in \
        capsys.readouterr().err
    assert main(["distill", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such recipe file" in capsys.readouterr().err
    missing_teacher = tmp_path / "distill.yaml"
    missing_teacher.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "logger": False, "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "e2v.tasks.distill.ODEDistillation",
                  "init_args": {"teacher": str(tmp_path / "none.ckpt")}},
        "data": {"class_path": f"{__name__}.CachedBatches"}}))
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", "--config", str(missing_teacher)])
    assert exit_info.value.code == 2
    assert f"model.init_args.teacher: {tmp_path / 'none.ckpt'} does not exist" in capsys.readouterr().err
    assert main(["distill", "--help"]) == 0
    assert "usage: e2v distill [--config RECIPE.yaml]" in capsys.readouterr().out
