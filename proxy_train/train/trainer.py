"""The one training step of hyla's LM loops (issue 17): proxy runs and full runs are two configurations of it.

A `Trainer` step at optimizer step ``s``:

1. sets every parameter group's lr to ``lr_at(s)`` (each loop's `schedule.wsd_lr`);
2. runs ``accum_steps`` micro-batches: ``loss_fn(batch)`` under bf16 autocast (when asked), then
   ``(loss / accum_steps).backward()``; under DDP only the last micro-batch's backward all-reduces (``no_sync``);
3. with ``check_finite``, reads the loss back and skips the update when it is NaN/inf;
4. clips the global grad norm (``grad_clip > 0``; FSDP's own clip for its shards), steps the optimizer and sets
   the gradients to None.

Its `Meter` keeps the loss, steps, tokens and wall time since the last reset: a log window of a full run, a
whole proxy run. What differs stays in the loops, which hand the trainer their loss function and batches:

- proxies (`hyla.proxy_train.proxy.run._Loop.run`): one micro-batch of LM rows followed by recall rows, loss `mixed_loss` (each part's
  token-mean cross-entropy, mixed by their row shares), a finite check every step (divergence is a result
  status), a progress bar, ``on_step``;
- full runs (`full_loop.train_loop_per_worker`): ``ShardStream`` micro-batches, the model's own loss (fla's
  fused cross-entropy on CUDA), the STOP file, log rows with the loss averaged over ranks and MFU, checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from hyla.proxy_train.model.loss import token_loss

__all__ = ["Meter", "MicroBatch", "Trainer", "clip_grad_norm", "mixed_loss"]

LossTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class MicroBatch:
    """The rows of one forward pass, on the device.

    Attributes:
        inputs: (B, T) token ids.
        targets: (B, T) next-token ids; ``-100`` is not scored.
        split: first row of a second part whose loss is averaged on its own (a proxy's recall rows, see
            `mixed_loss`); None = one part.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    split: int | None = None


def mixed_loss(logits: torch.Tensor, targets: torch.Tensor, split: int | None = None,
               term: LossTerm = token_loss) -> torch.Tensor:
    """``(1 - w) * term(rows[:split]) + w * term(rows[split:])``, with ``w`` the second part's share of the rows.

    Each part is a mean over its own scored tokens: recall rows score a few answer tokens each, and one token
    mean over all rows would drown them. ``split`` None: ``term`` over every row.
    """
    if split is None:
        return term(logits, targets)
    w = (targets.shape[0] - split) / targets.shape[0]
    return (1 - w) * term(logits[:split], targets[:split]) + w * term(logits[split:], targets[split:])


class Meter:
    """Loss, optimizer steps, input tokens and wall time since the last `reset` (on this rank).

    Attributes:
        loss_sum: sum of the steps' losses, on the device (read it at log time: reading syncs).
        steps: optimizer steps taken.
        tokens: input tokens of those steps.
        start: ``time.perf_counter()`` at the reset.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps, self.tokens = 0, 0
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since the reset, after the device has finished the queued work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.start

    def tokens_per_s(self, world: int = 1) -> float:
        """Input tokens per second since the reset, times ``world`` (ranks that each took as many)."""
        return self.tokens * world / max(self.elapsed(), 1e-9)


def clip_grad_norm(model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm of ``model`` to ``max_norm``. An FSDP model holds gradient shards and clips
    itself (the norm over every rank's shards); ``torch.nn.utils``' clip would see this rank's shards only."""
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        if isinstance(model, FullyShardedDataParallel):
            return model.clip_grad_norm_(max_norm)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)


class Trainer:
    """One optimizer step over micro-batches (see the module docstring); the loop around it is the caller's.

    Args:
        model: the module whose gradients are clipped (a DDP/FSDP wrapper when distributed: its ``no_sync``
            defers the gradient all-reduce to the last micro-batch).
        optimizer: stepped once per `step`.
        loss_fn: ``MicroBatch -> scalar loss`` (the forward pass and the loss, run under the autocast).
        lr_at: optimizer step (0-based) -> learning rate.
        device: where the batches and the model live.
        bf16: bf16 autocast around ``loss_fn``.
        grad_clip: global grad-norm clip (0 = off).
        accum_steps: micro-batches per optimizer step.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: Callable[[MicroBatch], torch.Tensor], lr_at: Callable[[int], float], *,
                 device: torch.device, bf16: bool = False, grad_clip: float = 0.0, accum_steps: int = 1) -> None:
        if accum_steps < 1:
            raise ValueError(f"accum_steps: {accum_steps} must be >= 1")
        self.model, self.optimizer, self.loss_fn, self.lr_at = model, optimizer, loss_fn, lr_at
        self.grad_clip, self.accum_steps = grad_clip, accum_steps
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
        self.meter = Meter(device)

    def step(self, step: int, micro_batches: Iterable[MicroBatch], check_finite: bool = False
             ) -> torch.Tensor | None:
        """Train on ``micro_batches`` (exactly ``accum_steps`` of them, drawn lazily) as optimizer step ``step``.

        Args:
            step: the optimizer step, 0-based (the lr is ``lr_at(step)``).
            micro_batches: the step's micro-batches.
            check_finite: read the loss back (a device sync) and make no update when it is not finite. Under DDP
                ranks would disagree: full runs check the loss averaged over ranks at log time instead.

        Returns:
            The step's loss (the mean over its micro-batches; detached, on the device), or None when
            ``check_finite`` found it non-finite (the gradients are dropped, the parameters untouched).
        """
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        k, meter = self.accum_steps, self.meter
        no_sync = getattr(self.model, "no_sync", None)
        loss_sum: torch.Tensor | None = None
        n = tokens = 0
        for n, batch in enumerate(micro_batches, 1):
            # DDP decides in the forward whether the backward all-reduces. (FSDP decides in the backward, so it
            # still reduce-scatters every micro-batch and keeps only gradient shards.)
            defer = no_sync() if no_sync is not None and n < k else nullcontext()
            with defer, self.autocast:
                loss = self.loss_fn(batch)
            (loss / k).backward()
            part = loss.detach() / k
            meter.loss_sum += part
            loss_sum = part if loss_sum is None else loss_sum + part
            tokens += batch.inputs.numel()
        if n != k or loss_sum is None:
            raise ValueError(f"step {step}: {n} micro-batches, expected accum_steps = {k}")
        if check_finite and not bool(torch.isfinite(loss_sum)):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.grad_clip > 0:
            clip_grad_norm(self.model, self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        meter.steps += 1
        meter.tokens += tokens
        return loss_sum
