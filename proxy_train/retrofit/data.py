"""The rows every retrofit stage trains and scores on: the graded recall levels and LM text windows.

`RetrofitData` holds, for one (level set, vocab, row length, text):

- a training pool per level (``pool_rows`` examples, even generator seeds) and a held-out set per level (odd
  seeds, never trained on), right-padded to ``seq_len`` (padding is never scored);
- text windows of ``seq_len + 1`` tokens (byte tokenizer), training and validation documents kept apart.

`batch` draws a step's rows from a seeded stream (`Rows`): text rows first, then recall rows spread evenly over
the levels admitted so far (a curriculum admits them easiest first). The same (seed, step) gives the same rows on
any machine, so a stage is reproducible and its seed names its data order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hyla.config import ConfigError
from hyla.proxy_train.train.config import TextConfig
from hyla.proxy_train.train.text import get_tokenizer, packed_windows
from hyla.proxy_train.tasks.common import IGNORE


@dataclass(frozen=True)
class Batch:
    """One step's rows: ``inputs``/``targets`` ``(B, T)``; rows ``[:n_text]`` are text, the rest recall."""

    inputs: torch.Tensor
    targets: torch.Tensor
    n_text: int


class RetrofitData:
    """Recall level pools, held-out level sets and text windows (module docstring).

    Args:
        levels: level-set name (a ``RecallSuite`` preset such as ``retrofit-tiny``).
        vocab_size: the models' vocabulary (task symbols sit at its top).
        seq_len: row length; every level must fit (None = the longest level).
        text: LM text source (byte tokenizer).
        pool_rows: training examples generated per level.
        eval_examples: held-out examples per level.
        text_tokens: training text tokens to pack (the windows repeat in a new order when used up).
        eval_text_rows: held-out text rows.
    """

    def __init__(self, levels: str, vocab_size: int, seq_len: int | None, text: TextConfig, pool_rows: int = 4096,
                 eval_examples: int = 256, text_tokens: int = 2_000_000, eval_text_rows: int = 32) -> None:
        from hyla.proxy_train.tasks.suite import RecallSuite

        tok = get_tokenizer("byte")
        if tok.vocab_size > vocab_size:
            raise ConfigError(f"retrofit: the layout's vocab_size {vocab_size} is smaller than the byte tokenizer's "
                              f"{tok.vocab_size}")
        suite = RecallSuite.named(levels, vocab_size)
        seq_len = seq_len or max(s.seq_len for s in suite.specs)
        too_long = [s for s in suite.specs if s.seq_len > seq_len]
        if too_long:
            raise ConfigError(f"retrofit.seq_len: {seq_len} is shorter than level {too_long[0].task}@"
                              f"{too_long[0].seq_len} of {levels}; raise seq_len to >= "
                              f"{max(s.seq_len for s in suite.specs)}")
        self.level_names = list(suite.levels)
        self.generators = list(suite.generators)
        self.seq_len = seq_len
        self.pool_rows = pool_rows
        self.text_config = text
        pools = [self._pad(*g.generate(pool_rows, 2 * (7919 * i + 1))) for i, g in enumerate(self.generators)]
        self.pool_x = torch.stack([p[0] for p in pools])  # (levels, pool_rows, T)
        self.pool_y = torch.stack([p[1] for p in pools])
        self.eval = {name: self._pad(*g.generate(eval_examples, 2 * (7919 * i + 1) + 1))
                     for i, (name, g) in enumerate(zip(self.level_names, self.generators))}
        self.text = packed_windows(text, 0, tok, seq_len, text_tokens)
        val = packed_windows(text, 1, tok, seq_len, eval_text_rows * (seq_len + 1))
        self.eval_text = (val[:, :-1], val[:, 1:])
        self.floors = {name: float(getattr(g, "floor", 0.0)) for name, g in zip(self.level_names, self.generators)}

    def _pad(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = self.seq_len - x.shape[1]
        return F.pad(x, (0, pad), value=0), F.pad(y, (0, pad), value=IGNORE)

    def batch(self, rng: np.random.Generator, rows: int, n_text: int, admitted: int | None = None) -> Batch:
        """``rows`` rows: ``n_text`` text windows, then recall rows spread over the first ``admitted`` levels
        (all when None), each an example drawn from its level's pool."""
        n_levels = len(self.level_names) if admitted is None else max(1, min(admitted, len(self.level_names)))
        n_rec = rows - n_text
        level = np.arange(n_rec) % n_levels
        pick = rng.integers(0, self.pool_rows, n_rec)
        windows = self.text[torch.as_tensor(rng.integers(0, len(self.text), n_text))]
        x = torch.cat([windows[:, :-1], self.pool_x[level, pick]])
        y = torch.cat([windows[:, 1:], self.pool_y[level, pick]])
        return Batch(x, y, n_text)
