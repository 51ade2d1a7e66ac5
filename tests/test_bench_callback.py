"""e2v.callbacks.Bench: cheap bench scores of fixed validation triplets, logged during training."""

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from e2v.callbacks import Bench

H = W = 32
FRAMES = 9


def disc(x: float, colour=(0.8, -0.8, -0.8)) -> torch.Tensor:
    """A red disc at column ``x`` on grey: ``[3, H, W]`` in [-1, 1]."""
    image = torch.zeros(3, H, W)
    y, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image[:, (y - H // 2) ** 2 + (xs - x) ** 2 <= 25] = torch.tensor(colour).view(3, 1)
    return image


def _item(i):
    ref = torch.ones(3, H, W)
    y, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ref[:, (y - 16) ** 2 + (xs - 16) ** 2 <= 100] = torch.tensor([0.8, -0.8, -0.8]).view(3, 1)
    return {"refs": ref[None], "ref_kinds": ["object"], "caption": f"a red ball {i}"}


def collate(items):
    return {"refs": torch.stack([i["refs"] for i in items]), "ref_kinds": [i["ref_kinds"] for i in items],
            "caption": [i["caption"] for i in items]}


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        return DataLoader([_item(i) for i in range(4)], batch_size=2, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader([_item(i) for i in range(4)], batch_size=2, collate_fn=collate)


class RollingBall(pl.LightningModule):
    """Test double: "generates" the red disc rolling right 2 px per frame (the reference's element, moving)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def training_step(self, batch, batch_idx):
        return (self.weight - 1) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def generate_samples(self, batch, steps, guidance, seed):
        video = torch.stack([disc(6 + 2 * f) for f in range(FRAMES)], dim=1)
        return {"video": video[None].expand(batch["refs"].shape[0], -1, -1, -1, -1), "refs": batch["refs"],
                "caption": list(batch["caption"])}


def test_bench_callback_logs_scores(tmp_path):
    logger = CSVLogger(str(tmp_path), name="run")
    callback = Bench(every_n_steps=2, num_samples=3, steps=1, at_fit_end=False,
                     scorers=["dynamic_degree", "object_consistency", "psnr"])
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=logger, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         limit_val_batches=0)
    trainer.fit(RollingBall(), datamodule=Data())
    assert callback.last_metrics["bench/dynamic_degree"] == 1.0
    assert callback.last_metrics["bench/object_consistency"] > 0.5
    assert "bench/psnr" not in callback.last_metrics  # no truth clips in these batches
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    assert any(row.get("bench/dynamic_degree") == "1.0" and row["step"] == "2" for row in rows)
    report = json.loads((Path(logger.log_dir) / "bench/step_2/report.json").read_text())
    assert [case["id"] for case in report["cases"]] == ["sample_0", "sample_1", "sample_2"]
    assert np.isclose(report["summary"]["object_consistency"], callback.last_metrics["bench/object_consistency"])
