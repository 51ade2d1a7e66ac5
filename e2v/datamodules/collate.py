"""Batch assembly: :func:`collate` stacks samples and lists skipped ones; training batches carry their sampler
position for the datamodule's checkpointed state."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from e2v.datamodules.samples import SampleKey, Skipped


def collate(samples: list[dict[str, Any] | Skipped]) -> dict[str, Any]:
    """Stack tensor fields, list the others; skipped samples are dropped and listed as ``(id, reason)``."""
    good = [s for s in samples if not isinstance(s, Skipped)]
    batch: dict[str, Any] = {"skipped": [(s.id, s.reason, s.message) for s in samples if isinstance(s, Skipped)]}
    if good:
        for name, value in good[0].items():
            values = [s[name] for s in good]
            batch[name] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    else:
        batch["id"] = []
    return batch


class Collate:
    """Picklable collate that also tags training batches with their sampler position."""

    def __init__(self, tag_position: bool):
        self.tag_position = tag_position

    def __call__(self, samples: list[tuple[Any, SampleKey]]) -> dict[str, Any]:
        batch = collate([sample for sample, _ in samples])
        if self.tag_position and samples:
            key = samples[0][1]
            batch["position"] = (key.epoch, key.step + 1)
        return batch


class Keyed(Dataset):
    """Wraps a dataset so each item comes back with the key that produced it (for the collate's position tag)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> tuple[Any, SampleKey]:
        return self.dataset[key], key
