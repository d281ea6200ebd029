"""`ShardStream`: the one seeded order in which proxies and full runs walk their packed training rows."""

from __future__ import annotations

import torch


class ShardStream:
    """Training rows walked in a seeded permutation per epoch: the one data order of proxies and full runs.

    Sample ``i`` is row ``perm(epoch)[i % n]`` with ``epoch = i // n``; the permutation's seed is ``seed *
    1_000_003 + rank * 7919 + epoch``. A full run draws ``micro_batch`` rows per step (`next_batch`) and
    checkpoints ``cursor`` (micro-batches consumed), so restoring it restores the exact stream; a proxy draws
    any number of rows per step (`take`: fewer LM rows while recall rows are mixed in) from rank 0.
    """

    def __init__(self, windows: torch.Tensor, micro_batch: int, seed: int, rank: int = 0) -> None:
        self.windows, self.micro_batch, self.seed, self.rank = windows, micro_batch, seed, rank
        self.position = 0  # samples drawn
        self._perm_epoch, self._perm = -1, None

    @property
    def cursor(self) -> int:
        """Micro-batches consumed (what a full run's checkpoint keeps)."""
        return self.position // self.micro_batch

    @cursor.setter
    def cursor(self, value: int) -> None:
        self.position = value * self.micro_batch

    def _perm_for(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 7919 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.windows), generator=g), epoch
        return self._perm

    def take(self, count: int) -> torch.Tensor:
        """The next ``count`` rows of the stream."""
        n, start = len(self.windows), self.position
        rows = [int(self._perm_for((start + j) // n)[(start + j) % n]) for j in range(count)]
        self.position += count
        return self.windows[rows]

    def next_batch(self) -> torch.Tensor:
        """The next micro-batch, as int64 token ids."""
        return self.take(self.micro_batch).long()
