"""``BucketBatchSampler``: batches that never mix resolution buckets nor reference counts, planned from
``(seed, epoch)`` and resumable mid-epoch."""

from __future__ import annotations

from typing import Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from e2v.datamodules.manifest import DEFAULT_MIN_REFERENCES
from e2v.datamodules.samples import SampleKey


class BucketBatchSampler(Sampler[list[SampleKey]]):
    """Batches that never mix bucket keys ``(bucket, N)``, planned deterministically from ``(seed, epoch)``.

    ``buckets[i]`` is sample i's bucket, ``ref_counts[i]`` its usable reference count. With probability
    ``reference_dropout_count`` a sample keeps a random count in ``[min_references, ref_counts[i]]`` for the
    epoch. Resumable: ``state_dict()`` = ``{"epoch", "batches_done"}``; iteration starts after the batches done.
    With ``world_size > 1`` each rank takes every ``world_size``-th batch of the shared plan.
    """

    def __init__(
        self,
        buckets: Sequence[Hashable],
        ref_counts: Sequence[int],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        min_references: int = DEFAULT_MIN_REFERENCES,
        reference_dropout_count: float = 0.0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.buckets = list(buckets)
        self.ref_counts = list(ref_counts)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.min_references = min_references
        self.reference_dropout_count = reference_dropout_count
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches_done = 0

    def plan(self, epoch: int) -> list[list[SampleKey]]:
        """This rank's batches of ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        groups: dict[tuple, list[tuple[int, int, int]]] = {}
        for index, (bucket, count) in enumerate(zip(self.buckets, self.ref_counts)):
            num_refs = count
            if self.shuffle and count > self.min_references and rng.random() < self.reference_dropout_count:
                num_refs = int(rng.integers(self.min_references, count + 1))
            sample_seed = int(rng.integers(2**31)) if self.shuffle else index
            groups.setdefault((bucket, num_refs), []).append((index, num_refs, sample_seed))
        batches = []
        for group_key in sorted(groups, key=repr):
            members = groups[group_key]
            if self.shuffle:
                members = [members[i] for i in rng.permutation(len(members))]
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append((group_key[0], chunk))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world_size > 1 and batches:
            batches += batches[: (-len(batches)) % self.world_size]
            batches = batches[self.rank :: self.world_size]
        return [
            [SampleKey(index, bucket, num_refs, seed, epoch, step) for index, num_refs, seed in chunk]
            for step, (bucket, chunk) in enumerate(batches)
        ]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        """The rest of the current epoch; a new iteration after the epoch's last batch starts the next epoch.

        Lightning stops at ``len(loader)`` batches without exhausting the iterator, so the position advances as
        batches are handed out rather than when the loop ends.
        """
        plan = self.plan(self.epoch)
        if self.batches_done >= len(plan):
            self.epoch, self.batches_done = self.epoch + 1, 0
            plan = self.plan(self.epoch)
        while self.batches_done < len(plan):
            self.batches_done += 1
            yield plan[self.batches_done - 1]

    def __len__(self) -> int:
        return len(self.plan(self.epoch))

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch restarts from its first batch."""
        if epoch != self.epoch:
            self.epoch, self.batches_done = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
