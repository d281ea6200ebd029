"""The one learning-rate schedule of every hyla training loop: warm-up, hold, cosine down to a floor (issue 17).

Three loops use it, each with its own settings:

- proxy LM runs (`hyla.proxy_train.proxy.config.lr_at`): ``lr``, ``warmup``, ``decay_fraction`` and
  ``min_lr_ratio`` of the ``ProxyConfig`` (warmup-stable-decay; ``decay_fraction: 1.0`` = a cosine over every
  post-warm-up step);
- recall probes (`hyla.proxy_train.probe.stack.StepTables`): each job's lr, the probe's ``warmup``,
  ``decay_fraction`` and ``min_lr_ratio``;
- full runs (`hyla.proxy_train.train.full_loop.lr_lambda`): ``lr = 1`` (torch's ``LambdaLR`` multiplies the optimizer's lr by the
  value) and ``decay_fraction = 1`` (warm-up, then a cosine over all the remaining steps to ``min_lr_ratio``).

Pure Python (no torch), so a schedule can be tabulated anywhere, e.g. into a device tensor before a CUDA graph
is captured. ``tests/proxy_train/train/test_schedule.py`` pins every loop's values to the floats the three schedules gave
before they were merged.

`check_optimizer` is the one check of the schedule and AdamW settings that proxies and full runs share.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from hyla.config import ConfigError

__all__ = ["check_optimizer", "wsd_lr"]

#: role -> (valid?, what is allowed); a field named ``warmup...`` has the warm-up role
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0, "must be > 0"),
    "warmup": (lambda v: v >= 0, "must be >= 0"),
    "min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "must be in [0, 1]"),
    "decay_fraction": (lambda v: 0.0 < v <= 1.0, "must be in (0, 1]"),
    "weight_decay": (lambda v: v >= 0, "must be >= 0"),
    "grad_clip": (lambda v: v >= 0, "must be >= 0 (0 = off)"),
    "betas": (lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "must be two numbers in [0, 1)"),
}


def check_optimizer(prefix: str, fields: Mapping[str, Any]) -> None:
    """Refuse bad schedule/AdamW settings with one line naming the field: ``fields`` maps each field's name in
    its config (``lr``, ``warmup`` or ``warmup_steps``, ``min_lr_ratio``, ``decay_fraction``, ``weight_decay``,
    ``grad_clip``, ``betas``) to its value; ``prefix`` starts the message (e.g. ``"proxy config."``)."""
    for name, value in fields.items():
        valid, allowed = _RULES["warmup" if name.startswith("warmup") else name]
        if not valid(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{prefix}{name}: {shown!r} {allowed}")


def wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float, min_ratio: float) -> float:
    """The learning rate at ``step`` (0-based) of a ``total``-step run: warm-up, stable, then cosine decay.

    - Warm-up: steps ``0 .. warmup-1`` take ``lr * (step + 1) / warmup`` (the last warm-up step reaches ``lr``).
    - Stable: ``lr`` until the decay starts. Of the ``span = max(1, total - warmup)`` post-warm-up steps the last
      ``decay = max(1, round(span * decay_fraction))`` decay; with ``decay_fraction = 1`` there is no stable
      phase beyond step ``warmup`` itself (which is ``lr``, the top of the cosine).
    - Decay: ``floor + (lr - floor) * (1 + cos(pi * p)) / 2`` with ``floor = lr * min_ratio`` and
      ``p = (step - start) / decay``, ``start = warmup + span - decay`` (``total - decay`` when ``total >
      warmup``); ``p`` reaches 1 at step ``total``, one past the last step, so the last step's lr is a little
      above the floor; steps past the end stay at the floor.

    Args:
        step: optimizer step, 0-based.
        total: steps in the run (``total <= warmup`` is allowed: the decay then takes one step).
        lr: peak learning rate (1.0 to get a multiplier, as ``LambdaLR`` wants).
        warmup: linear warm-up steps (0 = start at ``lr``).
        decay_fraction: share of the post-warm-up steps that decay, in (0, 1].
        min_ratio: the floor as a fraction of ``lr``, in [0, 1].

    Returns:
        The learning rate (a float: the same arithmetic in every caller, so values match bit for bit).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    decay_steps = max(1, round(span * decay_fraction))
    progress = (step - warmup - (span - decay_steps)) / decay_steps
    if progress <= 0:
        return lr
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))
