"""Proxy data: the LM windows, validation windows and recall suite of one run, cached per worker process.

Documents and packed tokens are cached by text config (`hyla.proxy_train.train.text.packed_windows`), so repeated
trials in one long-lived worker do not re-read or re-tokenize the corpus; only as many training tokens as a run
consumes are tokenized.
"""

from __future__ import annotations

from typing import Any

import torch

from hyla.config import ConfigError
from hyla.proxy_train.proxy.config import ProxyConfig
from hyla.proxy_train.tasks.suite import RecallSuite
from hyla.proxy_train.train.stream import ShardStream
from hyla.proxy_train.train.text import cached_documents, get_tokenizer, packed_windows
from hyla.space.layout import Layout


class ProxyData:
    """Training windows, validation windows and the recall suite of one proxy run.

    Text rows are visited in a fresh seeded permutation per epoch (no window repeats within an epoch).
    """

    def __init__(self, cfg: ProxyConfig, train: torch.Tensor, val: torch.Tensor, suite: Any) -> None:
        self.cfg, self.train, self.val, self.suite = cfg, train, val, suite
        self.eval_batch_size = cfg.eval_batch_size or cfg.batch_size
        self.stream = ShardStream(train, cfg.batch_size, cfg.seed)

    def train_batch(self, step: int, with_recall: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(lm_inputs, lm_targets, recall_inputs, recall_targets)`` for ``step`` (recall None when off)."""
        n_recall = self.cfg.recall_rows if (with_recall and self.suite is not None) else 0
        rows = self.stream.take(self.cfg.batch_size - n_recall)
        if not n_recall:
            return rows[:, :-1], rows[:, 1:], None, None
        rx, ry = self.suite.train_batch(n_recall, step, self.cfg.seed)
        return rows[:, :-1], rows[:, 1:], rx, ry

    def val_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Held-out LM batches of ``eval_batch_size`` rows (fewer if the split is small)."""
        b = self.eval_batch_size
        rows = self.val[: self.cfg.eval_batches * b]
        return [(rows[i:i + b, :-1], rows[i:i + b, 1:]) for i in range(0, rows.shape[0], b)]


def prepare_data(layout: Layout, cfg: ProxyConfig) -> ProxyData:
    """Validate tokenizer/vocab/corpus/suite and build the run's data (ConfigError on bad input).

    Only as many training tokens as the run consumes are tokenized (the corpus repeats, reshuffled, if shorter).
    """
    tokenizer = get_tokenizer(cfg.tokenizer)
    if tokenizer.vocab_size > layout.vocab_size:
        raise ConfigError(f"layout vocab_size: {layout.vocab_size} is smaller than tokenizer {cfg.tokenizer!r}'s "
                          f"vocab {tokenizer.vocab_size}; use a layout with vocab_size >= {tokenizer.vocab_size}")
    if not cfg.train_lm:  # recall probe only: no text to read
        return ProxyData(cfg, torch.empty(0, cfg.seq_len + 1, dtype=torch.long), torch.empty(0, cfg.seq_len + 1,
                                                                                          dtype=torch.long), None)
    need = cfg.total_steps * cfg.batch_size * (cfg.seq_len + 1)  # upper bound: LM rows <= batch_size
    train = packed_windows(cfg.text, 0, tokenizer, cfg.seq_len, need)
    eval_bs = cfg.eval_batch_size or cfg.batch_size
    val = packed_windows(cfg.text, 1, tokenizer, cfg.seq_len, cfg.eval_batches * eval_bs * (cfg.seq_len + 1))
    suite = None
    if cfg.suite is not None:
        kwargs = dict(vocab_size=layout.vocab_size, tokenizer=tokenizer, haystack_docs=cached_documents(cfg.text)[1],
                      seq_len_cap=cfg.suite.max_len, train_seq_len=cfg.seq_len)
        if cfg.suite.tasks:
            suite = RecallSuite.from_specs(cfg.suite.tasks, **kwargs)
        else:
            suite = RecallSuite.named(cfg.suite.levels, **kwargs)
    return ProxyData(cfg, train, val, suite)
