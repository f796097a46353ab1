"""The training order, sharding and augmentation seeds are pure functions of (seed, epoch, position)."""

from __future__ import annotations

import torch

from trainer.data.sampling import EpochBatchSampler, SeededView


def _rows(sampler: EpochBatchSampler) -> list[int]:
    return [row for batch in sampler for row, _ in batch]


def test_ranks_partition_the_epoch_and_every_rank_gets_as_many_batches():
    samplers = [
        EpochBatchSampler(48, 8, num_replicas=2, rank=r, seed=3, drop_last=True) for r in (0, 1)
    ]
    for s in samplers:
        s.set_epoch(5)
    rows = [_rows(s) for s in samplers]
    assert len(samplers[0]) == len(samplers[1]) == 3
    assert sorted(rows[0] + rows[1]) == list(range(48))  # each row once, no gaps


def test_order_depends_on_epoch_and_seed_only():
    a = EpochBatchSampler(30, 4, seed=1)
    b = EpochBatchSampler(30, 4, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert _rows(a) == _rows(b)
    b.set_epoch(3)
    assert _rows(a) != _rows(b)
    c = EpochBatchSampler(30, 4, seed=2)
    c.set_epoch(2)
    assert _rows(a) != _rows(c)


def test_resuming_at_batch_k_yields_exactly_the_remaining_batches():
    s = EpochBatchSampler(50, 8, num_replicas=2, rank=1, seed=0, drop_last=True)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start_batch=2)
    assert list(s) == full[2:]
    assert all(epoch == 4 for batch in full for _, epoch in batch)


def test_drop_last_only_when_a_full_batch_exists_and_padding_evens_ranks():
    s = EpochBatchSampler(5, 8, num_replicas=2, rank=0, drop_last=True)
    assert len(s) == 1 and len(_rows(s)) == 3  # 5 rows padded to 6, 3 per rank, kept
    s = EpochBatchSampler(21, 8, drop_last=True)
    assert len(s) == 2


def test_weighted_draws_follow_the_weights():
    weights = [1.0] * 90 + [9.0] * 10  # the last 10 rows: half of the mass
    s = EpochBatchSampler(100, 10, seed=0, weights=weights)
    drawn = []
    for epoch in range(20):
        s.set_epoch(epoch)
        drawn += _rows(s)
    share = sum(row >= 90 for row in drawn) / len(drawn)
    assert 0.4 < share < 0.6


class _Noise(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, row):
        return torch.rand(3)


def test_augmentation_draws_depend_on_epoch_and_row_not_on_order_or_callers_rng():
    view = SeededView(_Noise(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = view[(3, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    view[(5, 1)]
    assert torch.equal(view[(3, 1)], first)  # same (row, epoch): same draw, whatever came before
    assert not torch.equal(view[(3, 2)], first)  # another epoch: another draw
    assert not torch.equal(SeededView(_Noise(), seed=8)[(3, 1)], first)
