"""Shared pieces of the recall generators: vocab ranges, seeding and scoring.

Every generator is a frozen dataclass with ``generate(n, seed) -> (inputs, targets)``: LongTensors ``(n, T)``,
``targets[t]`` the token expected after ``inputs[t]`` (next-token convention) and ``IGNORE`` (-100, the LM loss's
`hyla.proxy_train.model.loss.IGNORE`) where nothing is scored. Synthetic symbols come from the top of the model vocab, ``[vocab_size - task_vocab, vocab_size)``, so
they never collide with byte text (ids < 260) when the model vocab is 512.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.loss import IGNORE


def symbol_base(vocab_size: int, task_vocab: int, need: int, where: str) -> int:
    """First id of the task's symbol range; validates that ``need`` symbols fit into ``task_vocab``."""
    if vocab_size < 2:
        raise ConfigError(f"{where}.vocab_size: {vocab_size!r} must be >= 2")
    if not 1 <= task_vocab <= vocab_size:
        raise ConfigError(f"{where}.task_vocab: {task_vocab!r} must be in [1, vocab_size={vocab_size}]")
    if task_vocab < need:
        raise ConfigError(f"{where}.task_vocab: {task_vocab!r} is too small; these parameters need >= {need} symbols")
    return vocab_size - task_vocab


class SymbolTask:
    """Mixin of the synthetic generators: the level key and the first id of the task's symbol range.

    A subclass (a frozen dataclass with ``name``, ``vocab_size``, ``seq_len``, ``task_vocab``) defines ``symbols_needed``,
    how many distinct symbols its parameters use; ``base`` validates that they fit and returns the range start.
    """

    @property
    def symbols_needed(self) -> int:
        raise NotImplementedError

    @property
    def base(self) -> int:
        return symbol_base(self.vocab_size, self.task_vocab, self.symbols_needed, self.name)

    @property
    def level(self) -> str:
        return f"{self.name}@{self.seq_len}"


def make_rng(seed: int, salt: str) -> np.random.Generator:
    """A numpy generator fixed by ``seed`` and the task's name, so two tasks with one seed still differ."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode())])


def check_positive(where: str, **values: int | float) -> None:
    """Refuse non-positive integer parameters with a one-line message."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{where}.{name}: {value!r} must be >= 1")


def filler(rng: np.random.Generator, task_vocab: int, excluded: np.ndarray, seq_len: int) -> np.ndarray:
    """Random symbol offsets ``(n, seq_len)`` drawn uniformly from ``[0, task_vocab)`` minus each row's
    ``excluded`` offsets ``(n, m)`` (distinct per row): filler that never repeats a row's keys."""
    n, m = excluded.shape
    allowed = np.ones((n, task_vocab), dtype=bool)
    allowed[np.arange(n)[:, None], excluded] = False
    allowed_ids = np.argsort(~allowed, axis=1, kind="stable")[:, : task_vocab - m]  # allowed offsets, in order
    return np.take_along_axis(allowed_ids, rng.integers(0, task_vocab - m, (n, seq_len)), 1)


def power_law_gaps(rng: np.random.Generator, n: int, space: int, count: int, alpha: float) -> np.ndarray:
    """``count`` distinct gaps per row from ``0..space-1``, ``p(gap = i - 1) ∝ i^(alpha - 1)`` (Zoology's query
    gaps), in random order: Gumbel top-k over the log-probabilities."""
    log_p = (alpha - 1) * np.log(np.arange(1, space + 1, dtype=np.float64))
    return np.argsort(-(log_p + rng.gumbel(size=(n, space))), axis=1)[:, :count]


def to_tensors(inputs: np.ndarray, targets: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)), \
        torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))


def position_accuracy(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per example: the share of scored positions predicted exactly (NaN for an example with none scored)."""
    mask = targets != IGNORE
    hits = ((preds == targets) & mask).sum(-1).float()
    n = mask.sum(-1).float()
    return torch.where(n > 0, hits / n.clamp(min=1), torch.full_like(n, float("nan")))


@torch.no_grad()
def level_accuracy(logits_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   batch_size: int,
                   score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = position_accuracy) -> float:
    """Accuracy of one recall level: per example ``score(argmax predictions, targets)`` (default: the share of
    scored positions predicted exactly; RULER tasks score whole answers), then the mean over the examples that
    have something scored (0.0 when none has).

    Args:
        logits_fn: inputs -> logits.
        x, y: the level's held-out examples ``(N, T)`` (targets ``-100`` where nothing is scored).
        batch_size: examples per ``logits_fn`` call.
        score: per-example accuracy of ``(preds, targets)``, NaN for an example with nothing scored.
    """
    per_example = torch.cat([score(logits_fn(x[s:s + batch_size]).argmax(-1).cpu(), y[s:s + batch_size])
                             for s in range(0, len(x), batch_size)])
    per_example = per_example[~torch.isnan(per_example)]
    return float(per_example.mean()) if len(per_example) else 0.0


def span_exact_match(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per example: the share of answers (maximal runs of scored positions) whose every token is right.

    RULER-style tasks score answers, not tokens: a 7-digit number with one wrong digit is a miss.
    """
    out = torch.full((targets.shape[0],), float("nan"))
    for i in range(targets.shape[0]):
        mask = (targets[i] != IGNORE).tolist()
        good = (preds[i] == targets[i]).tolist()
        spans, ok, in_span = 0, 0, False
        for m, g in zip(mask, good):
            if m and not in_span:
                spans, in_span, span_ok = spans + 1, True, True
            if m:
                span_ok = span_ok and g
            if in_span and not m:
                ok, in_span = ok + int(span_ok), False
        if in_span:
            ok += int(span_ok)
        if spans:
            out[i] = ok / spans
    return out
