"""The sampling settings a run saves (checkpoint, export) and how commands resolve them with their flags."""

import types

import pytest
import torch

from e2v.callbacks.samples import SampleVideos
from e2v.pipeline.sampling import DEFAULTS, SamplingSettings, read_saved, resolve
from e2v.tasks.e2v_diffusion import E2VDiffusion


def test_a_run_saves_its_solver_callback_and_data_settings(tmp_path):
    module = E2VDiffusion(text_encoder={"name": "umt5", "preset": "tiny", "max_length": 8},
                          sample_solver={"name": "euler", "shift": 3.0})
    data = types.SimpleNamespace(buckets=[(17, 32, 48)], max_references=3)
    module._trainer = types.SimpleNamespace(callbacks=[SampleVideos(steps=20, guidance=1.0, image_guidance=1.3, fps=8)],
                                            datamodule=data)
    checkpoint = {"state_dict": {}, "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    module._trainer = None
    assert checkpoint["sampling"] == {"solver": "euler", "shift": 3.0, "steps": 20, "guidance": 1.0,
                                      "image_guidance": 1.3, "fps": 8.0, "frames": 8, "height": 32, "width": 48,
                                      "timesteps": None}  # 17 - 9 ref frames
    torch.save(checkpoint, tmp_path / "run.ckpt")
    assert read_saved(tmp_path / "run.ckpt") == checkpoint["sampling"]


def test_a_checkpoint_from_before_saved_settings_keeps_its_sample_solver(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {"sample_solver": {"name": "euler", "shift": 3.0}}},
               tmp_path / "old.ckpt")
    resolved = resolve(read_saved(tmp_path / "old.ckpt"), {})
    assert (resolved.settings.solver, resolved.settings.shift, resolved.settings.steps) == ("euler", 3.0, 50)


def test_flags_override_and_the_line_says_where_each_value_came_from():
    saved = SamplingSettings(solver="euler", shift=3.0, steps=20, guidance=1.0, fps=8.0, frames=8, height=32,
                             width=32).to_dict()
    resolved = resolve(saved, {"steps": 8, "guidance": None})
    assert resolved.settings.steps == 8 and resolved.settings.guidance == 1.0 and not resolved.warnings
    line = resolved.describe()
    assert "steps 8 (flag)" in line and "guidance 1 (model)" in line and "size 32x32 (model)" in line
    assert "image guidance off (model)" in line
    guided = resolve({**saved, "image_guidance": 1.3}, {})
    assert guided.settings.image_guidance == 1.3 and "image guidance 1.3 (model)" in guided.describe()
    off = resolve({**saved, "image_guidance": 1.3}, {"image_guidance": 0.0})  # --image-guidance 0 turns it off
    assert off.settings.image_guidance is None and "image guidance off (flag)" in off.describe()
    assert resolve(None, {}).settings == DEFAULTS and "solver unipc (default)" in resolve(None, {}).describe()


def test_bad_saved_settings_are_refused_naming_the_key():
    with pytest.raises(ValueError, match="unknown sampling setting.*'stepz'"):
        resolve({"stepz": 4}, {}, where="x.ckpt")
    with pytest.raises(ValueError, match="x.ckpt.*solver must be one of"):
        resolve({"solver": "ddim"}, {}, where="x.ckpt")
    with pytest.raises(ValueError, match="x.ckpt.*image_guidance must be >= 0"):
        resolve({"image_guidance": -1.0}, {}, where="x.ckpt")
    with pytest.raises(ValueError, match="timesteps .* are not 2 steps"):
        SamplingSettings(steps=2, timesteps=(1000.0, 750.0, 500.0))
