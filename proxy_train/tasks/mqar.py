"""Multi-query associative recall (MQAR), as in Zoology (Arora et al. 2023, ``zoology/data/multiquery_ar.py``).

Parameters:
    vocab_size: model vocabulary; symbols come from its top ``task_vocab`` ids.
    seq_len: T, the input length (even, >= 4 * num_kv_pairs).
    num_kv_pairs: key-value pairs shown, each queried once.
    task_vocab: symbols used (default 128): keys from the lower half, values from the upper half, both drawn
        without replacement per example, so a key never repeats within its context.
    alpha: power-law exponent of the query gaps, p(gap = i) ∝ alpha * i^(alpha - 1), i = 1..(T - 2P)/2;
        Zoology's 0.01 favours queries soon after the context.

Layout of one example (P pairs, context 2P): ``k1 v1 k2 v2 ... kP vP`` then, in the remaining ``T - 2P``
positions, each key again at an even offset ``2 * gap`` (gaps distinct, in random order); every other position is
random filler from the task symbols other than this example's keys. Zoology draws filler from its whole vocab
(8192), where a filler token equal to one of the P keys is rare; from a task range of 32-128 symbols it is not
(mqar@128x8 with 128 symbols: ~6 stray key occurrences per example, each followed by a random token), and a stray
``k x`` pair is a wrong association that only attention's position bias can ignore, so the keys are excluded.
Filler never looks like text (task range only). The target after a queried key is its value; every other target
is -100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.tasks.common import (
    IGNORE, SymbolTask, check_positive, filler, make_rng, power_law_gaps, to_tensors,
)


@dataclass(frozen=True, kw_only=True)
class MQAR(SymbolTask):
    """Zoology's MQAR generator (module docstring)."""

    vocab_size: int
    seq_len: int = 128
    num_kv_pairs: int = 8
    task_vocab: int = 128
    alpha: float = 0.01

    name = "mqar"

    def __post_init__(self) -> None:
        check_positive("mqar", seq_len=self.seq_len, num_kv_pairs=self.num_kv_pairs)
        if self.seq_len % 2 or self.seq_len < 4 * self.num_kv_pairs:
            raise ConfigError(f"mqar.seq_len: {self.seq_len!r} must be even and >= 4 * num_kv_pairs = "
                              f"{4 * self.num_kv_pairs}")
        if not self.alpha > 0:
            raise ConfigError(f"mqar.alpha: {self.alpha!r} must be > 0")
        self.base  # validates the symbol range

    @property
    def symbols_needed(self) -> int:
        return 2 * self.num_kv_pairs

    @property
    def pairs(self) -> int:
        """Key-value pairs in the context (what a recurrent state must hold)."""
        return self.num_kv_pairs

    @property
    def lookups(self) -> int:
        """Dependent lookups an answer needs: one."""
        return 1

    @property
    def floor(self) -> float:
        """Accuracy of guessing one of the context's values (the 1/pairs plateau)."""
        return 1.0 / self.num_kv_pairs

    @property
    def level(self) -> str:
        """Suite key of this difficulty level, e.g. ``mqar@128x8``."""
        return f"mqar@{self.seq_len}x{self.num_kv_pairs}"

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: inputs and targets, LongTensors ``(n, seq_len)``.

        Vectorised over examples (a recall probe draws a batch per step): keys, values and query gaps are drawn
        without replacement per row by sorting random keys (Gumbel top-k for the power-law gaps).
        """
        check_positive("mqar", n=n)
        rng = make_rng(seed, "mqar")
        base, half, pairs = self.base, self.task_vocab // 2, self.num_kv_pairs
        ctx, space = 2 * pairs, (self.seq_len - 2 * pairs) // 2
        rows = np.arange(n)[:, None]
        keys = rng.random((n, half)).argsort(axis=1)[:, :pairs]  # symbol offsets, distinct per row
        values = half + rng.random((n, self.task_vocab - half)).argsort(axis=1)[:, :pairs]
        inputs = filler(rng, self.task_vocab, keys, self.seq_len)  # never one of this row's keys
        inputs[:, 0:ctx:2], inputs[:, 1:ctx:2] = keys, values
        gaps = power_law_gaps(rng, n, space, pairs, self.alpha)
        query_pos = ctx + 2 * gaps
        inputs[rows, query_pos] = keys
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        targets[rows, query_pos] = values + base
        return to_tensors(inputs + base, targets)
