"""The one evaluator of hyla's LMs: held-out LM loss and recall accuracy, for proxies and full runs alike.

Proxy LM runs (`hyla.proxy_train.proxy.run.run_proxy`), their recall suite (`tasks.suite.RecallSuite.evaluate`)
and full runs (`full_loop.evaluate`) score with these functions (a recall level with `tasks.common.level_accuracy`,
which the suite calls too), so a proxy's ``lm_val_loss``/``recall`` and a full run's ``val_loss``/``recall`` mean
the same thing. The recall probe scores its stacked replicas on the device itself
(`hyla.proxy_train.probe.stack.ProbeStack.score`), with the same per-position accuracy (`tasks.common.position_accuracy`).

Every function takes a ``logits_fn``: CPU or device inputs ``(B, T)`` -> fp32 logits ``(B, T, V)``
(`autocast_logits` makes one from a model's forward).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from hyla.proxy_train.model.loss import IGNORE
from hyla.proxy_train.tasks.common import level_accuracy

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["LogitsFn", "autocast_logits", "level_accuracy", "lm_loss"]


def autocast_logits(forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, bf16: bool) -> LogitsFn:
    """A ``logits_fn`` from ``forward`` (device inputs -> logits): inputs moved to ``device``, the forward run
    under bf16 autocast when ``bf16``, the logits returned in fp32."""
    def logits_fn(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return forward(inputs.to(device, non_blocking=True)).float()
    return logits_fn


@torch.no_grad()
def lm_loss(logits_fn: LogitsFn, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Held-out LM loss: the cross-entropy summed over every scored target token of ``batches`` (pairs of inputs
    and next-token targets, targets ``-100`` not scored), divided by their count.

    Returns:
        ``(mean loss, scored tokens)``; the mean is NaN when nothing was scored.
    """
    total, count = 0.0, 0
    for x, y in batches:
        logits = logits_fn(x)
        y = y.to(logits.device)
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum"))
        count += int((y != IGNORE).sum())
    return (total / count if count else float("nan")), count
