"""The probe's data: the MQAR levels of the sweep, their rows generated once per call (`LevelPool`) and the rows
each probe draws at each step (`schedule`)."""

from __future__ import annotations

import numpy as np
import torch

from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.tasks.mqar import MQAR


def probe_levels(cfg: RecallProbeConfig, vocab_size: int) -> list[MQAR]:
    """The sweep's MQAR generators, easiest first (ConfigError if the symbols do not fit the vocab)."""
    cfg.check_vocab(vocab_size)
    return [MQAR(vocab_size=vocab_size, seq_len=cfg.seq_len, num_kv_pairs=p, task_vocab=cfg.symbols)
            for p in cfg.pairs]


class LevelPool:
    """The training rows of every level (``pool_rows`` each, seeded by ``pool_seed``) on the device, plus one
    fixed held-out set per level for the checks and the final score."""

    def __init__(self, cfg: RecallProbeConfig, vocab_size: int, dev: torch.device) -> None:
        self.levels = probe_levels(cfg, vocab_size)
        self.rows = cfg.pool_rows
        xs, ys = zip(*(g.generate(self.rows, 2 * (cfg.pool_seed * 1_000_003 + i))  # even seeds: training
                       for i, g in enumerate(self.levels)))
        self.x, self.y = torch.cat(xs).to(dev), torch.cat(ys).to(dev)
        ex, ey = zip(*(g.generate(cfg.eval_examples, 2 * (cfg.pool_seed * 7919 + i) + 1)  # odd: never trained on
                       for i, g in enumerate(self.levels)))
        self.eval_x, self.eval_y = torch.stack(ex).to(dev), torch.stack(ey).to(dev)  # (levels, n, T)
        n_check = min(64, cfg.eval_examples)
        self.check_x = self.eval_x[:, :n_check].flatten(0, 1)
        self.check_y = self.eval_y[:, :n_check].flatten(0, 1)


def schedule(cfg: RecallProbeConfig, n_levels: int, rows: int, seed: int, steps: int) -> np.ndarray:
    """Row indices into a `LevelPool` for every step, ``(steps, batch_size)``.

    Each step's rows are split evenly over the levels admitted so far (curriculum: one more level every
    ``curriculum * steps / (levels - 1)`` steps, easiest first), rows drawn at random by ``seed``.
    """
    rng = np.random.default_rng([seed, 0x9E3779B9])
    ramp = curriculum_steps(cfg, steps)
    step = np.arange(steps)[:, None]
    allowed = np.minimum(n_levels, 1 + (n_levels - 1) * step // ramp) if cfg.curriculum else np.full_like(step, n_levels)
    level = np.arange(cfg.batch_size)[None, :] % allowed
    return level * rows + rng.integers(0, rows, (steps, cfg.batch_size))


def curriculum_steps(cfg: RecallProbeConfig, steps: int) -> int:
    """The step by which every level is admitted (at least 1; meaningless without a curriculum)."""
    return max(1, round(cfg.curriculum * steps))
