"""Multi-hop associative recall: chains of dependent assignments, RULER's variable tracking in symbols.

Parameters (``MultiHop``):
    vocab_size: model vocabulary; symbols come from its top ``task_vocab`` ids.
    seq_len: T (even, >= 2 * num_chains * num_hops + 2 * num_chains).
    num_chains: independent chains per example; each is queried once, the others are its distractors.
    num_hops: k, the assignments per chain = the dependent lookups an answer needs.
    task_vocab: symbols used; variables from the lower half (``num_chains * num_hops`` distinct per example),
        values from the upper half (``num_chains`` distinct per example).
    order: ``random`` (default): the ``num_chains * num_hops`` assignments in a random order, so a link may come
        before or after the link it refers to; ``chain``: each chain's links in assignment order (RULER's
        variable tracking: ``VAR X1 = 12345``, ``VAR X2 = VAR X1``, ...), chains interleaved at random.
    alpha: power-law exponent of the query gaps, as in MQAR (``tasks/mqar.py``).

One chain is ``x1 v``, ``x2 x1``, ..., ``xk x(k-1)``: a link is two tokens, the assigned variable then what it is
assigned (the chain's value for ``x1``, the previous variable otherwise). The context holds every link of every
chain; the rest of the sequence holds, at even offsets ``2 * gap`` (MQAR's power-law gaps), the last variable
``xk`` of each chain, and its target is the chain's value ``v``. Every other target is -100; every other position
is filler from the task symbols other than the example's variables (values may appear as filler). With
``num_hops = 1`` the task is MQAR with ``num_chains`` pairs.

Why k lookups: the query ``xk`` appears in the context only as the head of its own link, whose second token is
``x(k-1)``, a variable, never the answer. Reaching ``v`` takes the link of ``xk``, then of ``x(k-1)``, ... k
dependent lookups. In ``random`` order they cannot be pre-resolved while reading the context (a link's referent
may come later), so they happen at the query: one attention layer performs one lookup, and k hops need k
attention layers or linear layers that recall. ``chain`` order lets a model resolve each link as it reads it.
Shortcuts that do not work (tested in ``tests/proxy_train/tasks/test_multihop.py``): the answer's position is not at a fixed
offset from the query or from the query's link; the context holds ``num_chains`` values, so guessing a value
seen in context scores ``1 / num_chains`` (`floor`); one lookup yields a variable, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.tasks.common import (
    IGNORE, SymbolTask, check_positive, filler, make_rng, power_law_gaps, to_tensors,
)

ORDERS = ("random", "chain")


@dataclass(frozen=True, kw_only=True)
class MultiHop(SymbolTask):
    """Chains of ``num_hops`` dependent assignments, the chain ends queried (module docstring)."""

    vocab_size: int
    seq_len: int = 64
    num_chains: int = 4
    num_hops: int = 2
    task_vocab: int = 64
    order: str = field(default="random", metadata={"choices": ORDERS})
    alpha: float = 0.01

    name = "hop"

    def __post_init__(self) -> None:
        check_positive(self.name, seq_len=self.seq_len, num_chains=self.num_chains, num_hops=self.num_hops)
        if self.order not in ORDERS:
            raise ConfigError(f"hop.order: {self.order!r} is not allowed; expected one of {', '.join(ORDERS)}")
        need = 2 * self.pairs + 2 * self.num_chains
        if self.seq_len % 2 or self.seq_len < need:
            raise ConfigError(f"hop.seq_len: {self.seq_len!r} must be even and >= 2 * (num_chains * num_hops + "
                              f"num_chains) = {need}")
        if not self.alpha > 0:
            raise ConfigError(f"hop.alpha: {self.alpha!r} must be > 0")
        self.base  # validates the symbol range

    @property
    def pairs(self) -> int:
        """Links (two-token assignments) in the context: ``num_chains * num_hops``."""
        return self.num_chains * self.num_hops

    @property
    def lookups(self) -> int:
        """Dependent lookups an answer needs: ``num_hops``."""
        return self.num_hops

    @property
    def floor(self) -> float:
        """Accuracy of guessing one of the context's values: ``1 / num_chains``."""
        return 1.0 / self.num_chains

    @property
    def symbols_needed(self) -> int:
        # variables fill the lower half, values the upper half
        return 2 * max(self.pairs, self.num_chains)

    @property
    def level(self) -> str:
        """Suite key, e.g. ``hop2@64x4`` (k hops, T, chains); ``:chain`` marks in-order links."""
        suffix = "" if self.order == "random" else f":{self.order}"
        return f"hop{self.num_hops}@{self.seq_len}x{self.num_chains}{suffix}"

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: inputs and targets, LongTensors ``(n, seq_len)`` (vectorised)."""
        check_positive(self.name, n=n)
        rng = make_rng(seed, self.level)
        c, k, half = self.num_chains, self.num_hops, self.task_vocab // 2
        links, ctx, space = c * k, 2 * c * k, (self.seq_len - 2 * c * k) // 2
        rows = np.arange(n)[:, None]
        variables = rng.random((n, half)).argsort(axis=1)[:, :links].reshape(n, c, k)  # [:, i, j] = x(j+1)
        values = half + rng.random((n, self.task_vocab - half)).argsort(axis=1)[:, :c]  # (n, c)
        heads = variables.reshape(n, links)
        refs = np.concatenate([values[:, :, None], variables[:, :, :-1]], axis=2).reshape(n, links)
        sort_key = rng.random((n, c, k))
        if self.order == "chain":  # increasing within a chain: links keep their order, chains interleave
            sort_key = np.sort(sort_key, axis=2)
        perm = sort_key.reshape(n, links).argsort(axis=1)
        inputs = filler(rng, self.task_vocab, heads, self.seq_len)  # never one of this row's variables
        inputs[:, 0:ctx:2] = np.take_along_axis(heads, perm, 1)
        inputs[:, 1:ctx:2] = np.take_along_axis(refs, perm, 1)
        gaps = power_law_gaps(rng, n, space, c, self.alpha)
        query_pos = ctx + 2 * gaps
        inputs[rows, query_pos] = variables[:, :, -1]
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        targets[rows, query_pos] = values + self.base
        return to_tensors(inputs + self.base, targets)
