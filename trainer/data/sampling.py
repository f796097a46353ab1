"""Which images each process trains on, in which order, with which augmentation draws.

Everything here is a pure function of (train.seed, epoch, position), so a run resumed at batch k
of epoch e sees exactly the batches and the crops it would have seen without the interruption:
- the order of epoch e is a permutation (or, for data.sampler=balanced, weighted draws with
  replacement) from a generator seeded with (seed, e), the same on every rank;
- process r of W takes positions r, r+W, r+2W, ... of that order, padded to a multiple of W
  (as DistributedSampler does), and cuts its share into batches; resuming skips whole batches
  without loading them;
- the augmentation of image `row` in epoch e is drawn from torch's RNG seeded with
  (seed, e, row) in whichever process or worker decodes it, so neither the worker count nor the
  batches skipped on resume change it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Dataset


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, dataset row)."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + row) % (2**63)


class EpochBatchSampler:
    """Batches of (row, epoch) keys for one process; `set_epoch(e, start_batch=k)` before iterating.

    `weights` (one per row) switch from a permutation to draws with replacement in proportion to
    them. `drop_last` drops this process's ragged last batch (a batch of 1 breaks BatchNorm).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        weights: Sequence[float] | None = None,
    ):
        if num_rows < 1:
            raise ValueError("the training split is empty")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.drop_last = drop_last
        self.weights = torch.as_tensor(weights, dtype=torch.double) if weights is not None else None
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def per_replica(self) -> int:
        return -(-self.num_rows // self.num_replicas)  # ceil: padded so every rank gets as many

    def __len__(self) -> int:
        """Batches per epoch for this process (a resumed epoch yields fewer)."""
        n, b = self.per_replica, self.batch_size
        return n // b if self.drop_last and n >= b else -(-n // b)

    def order(self, epoch: int) -> torch.Tensor:
        """The whole epoch's row order, before sharding; identical on every rank."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        if self.weights is not None:
            return torch.multinomial(self.weights, self.num_rows, replacement=True, generator=g)
        return torch.randperm(self.num_rows, generator=g)

    def shard(self, epoch: int) -> list[int]:
        order = self.order(epoch).tolist()
        total = self.per_replica * self.num_replicas
        order += order[: total - len(order)]  # pad by repeating the first rows
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rows, b, epoch = self.shard(self.epoch), self.batch_size, self.epoch
        for i in range(self.start_batch, len(self)):
            yield [(row, epoch) for row in rows[i * b : (i + 1) * b]]


class SeededView(Dataset):
    """A map-style view of a dataset whose keys are (row, epoch): the row's transform draws its
    randomness from torch's RNG seeded by (seed, epoch, row), without disturbing the caller's RNG."""

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        row, epoch = key
        with torch.random.fork_rng(devices=[]):  # CPU RNG saved and restored around the draw
            torch.manual_seed(sample_seed(self.seed, epoch, row))
            return self.dataset[row]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        return [self[key] for key in keys]
