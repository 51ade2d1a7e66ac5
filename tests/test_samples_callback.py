"""SampleVideos: mp4s that decode with the right frame count, preview PNG sizes, MLflow artifacts, EMA weights."""

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from torch.utils.data import DataLoader

from e2v.callbacks import EMA, SampleVideos
from e2v.datamodules.video_io import read_video
from e2v.loggers import E2VMLFlowLogger

torch.set_num_threads(1)
H, W, N, F_OUT, F_TRUE = 16, 24, 2, 5, 9


def _item(i):
    return {
        "video": torch.full((3, F_TRUE, H, W), -0.5 + 0.1 * i),
        "refs": torch.full((N, 3, H, W), 0.2 * i - 0.8),
        "caption": f"caption {i}",
    }


class TripletData(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader([_item(i) for i in range(8)], batch_size=2)

    def val_dataloader(self):
        return DataLoader([_item(i) for i in range(8)], batch_size=2)


class TinyGenerator(pl.LightningModule):
    """Test double of the diffusion module: its "generation" is a grey ramp over the frames, so the written files
    can be checked pixel by pixel; it records how it was called (weights, mode, arguments)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))
        self.calls: list[dict] = []

    def training_step(self, batch, batch_idx):
        return (self.scale - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def generate_samples(self, batch, steps, guidance, seed):
        self.calls.append({"steps": steps, "guidance": guidance, "seed": seed, "training": self.training,
                           "grad": torch.is_grad_enabled(), "scale": self.scale.item(), "captions": batch["caption"]})
        refs = batch["refs"]
        ramp = torch.linspace(-1, 1, F_OUT).view(1, 1, F_OUT, 1, 1)
        video = ramp.expand(refs.shape[0], 3, F_OUT, H, W).clone()
        return {"video": video, "refs": refs, "caption": list(batch["caption"])}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_samples_written_and_logged(tmp_path):
    logger = E2VMLFlowLogger(save_dir=str(tmp_path / "runs"), experiment_name="samples")
    callback = SampleVideos(every_n_steps=2, num_samples=3, steps=7, guidance=2.5, seed=11, fps=8)
    ema = EMA(decay=0.5, use_for_validation=False)
    model = TinyGenerator()
    trainer = pl.Trainer(accelerator="cpu", max_steps=5, logger=logger, callbacks=[ema, callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0)
    trainer.fit(model, datamodule=TripletData())

    # steps 2 and 4, plus the end of fit (5); 3 items come as a batch of 2 and a batch of 1
    folder = Path(logger.log_dir) / "samples"
    assert sorted(p.name for p in folder.iterdir()) == ["step_2", "step_4", "step_5"]
    assert len(model.calls) == 6
    assert [c["captions"] for c in model.calls[:2]] == [["caption 0", "caption 1"], ["caption 2"]]
    assert all(c["steps"] == 7 and c["guidance"] == 2.5 and c["seed"] == 11 for c in model.calls)
    assert not any(c["training"] or c["grad"] for c in model.calls)
    assert model.training  # train mode restored
    # generation saw the EMA weights, the training weights came back
    assert model.calls[-1]["scale"] == pytest.approx(ema.shadow["scale"].item())
    assert model.calls[-1]["scale"] != pytest.approx(model.scale.item())

    step = folder / "step_4"
    for i in range(3):
        video = read_video(step / f"sample_{i}.mp4", num_frames=None)
        assert video.shape == (F_OUT, H, W, 3)
        expected = ((torch.linspace(-1, 1, F_OUT) + 1) * 127.5).round()
        assert torch.allclose(video.float().mean(dim=(1, 2, 3)), expected, atol=3)
        png = np.asarray(Image.open(step / f"sample_{i}.png"))
        scale = -(-256 // (2 * H))  # enlarged (nearest, whole factor) to at least 256 rows for the MLflow UI
        assert png.shape == (2 * H * scale, (N + 4) * W * scale, 3)  # refs + 4 frames, generated over truth row
        assert (png[::scale, ::scale].repeat(scale, 0).repeat(scale, 1) == png).all()
        png = png[::scale, ::scale]
        ref_value = round((0.2 * i - 0.8 + 1) * 127.5)
        assert abs(int(png[0, 0, 0]) - ref_value) <= 1 and png[H, 0, 0] == 255  # white under the references
        truth_value = round((-0.5 + 0.1 * i + 1) * 127.5)
        assert abs(int(png[H, N * W, 0]) - truth_value) <= 1
        assert (step / f"sample_{i}.txt").read_text() == f"caption {i}\n"

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(logger.run_id, "samples/step_4")}
    assert {f"samples/step_4/sample_{i}.{ext}" for i in range(3) for ext in ("mp4", "png", "txt")} == logged


def test_without_validation_data_training_goes_on_with_one_warning(tmp_path):
    """Issue 13: ``val_manifest: null`` (a datamodule without validation data) used to crash with an IndexError."""
    class NoVal(TripletData):
        def val_dataloader(self):
            return []  # what TripletDataModule returns without a val_manifest

    model = TinyGenerator()
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, callbacks=[SampleVideos(every_n_steps=1)],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no validation data") as caught:
        trainer.fit(model, datamodule=NoVal())
    assert trainer.global_step == 2 and model.calls == []
    assert sum("no validation data" in str(w.message) for w in caught) == 1
    assert not list(tmp_path.rglob("samples"))


def test_image_guidance_reaches_the_module_only_when_set(tmp_path):
    """A run that samples with reference guidance passes it on; one without keeps calling modules whose
    ``generate_samples`` takes no ``image_guidance``."""
    class Guided(TinyGenerator):
        def generate_samples(self, batch, steps, guidance, seed, image_guidance=None):
            out = super().generate_samples(batch, steps, guidance, seed)
            self.calls[-1]["image_guidance"] = image_guidance
            return out

    model = Guided()
    trainer = pl.Trainer(accelerator="cpu", max_steps=1, logger=False, limit_val_batches=0,
                         callbacks=[SampleVideos(every_n_steps=1, num_samples=1, image_guidance=1.3)],
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=TripletData())
    assert model.calls and all(c["image_guidance"] == 1.3 for c in model.calls)
