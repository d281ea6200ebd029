"""Training the supernet: sample layouts, route each its rows, distil every one towards the teacher.

Each step draws ``layouts_per_step`` layouts from the sampler (the study's own space) and one batch of rows from
the data (text and recall rows); layout ``j`` takes rows ``j, j + L, j + 2L, ...`` (so every layout sees text and
recall), and all run in one routed pass (`route.run_many`). The loss, averaged over the layouts:

- ``kl_weight`` x KL(teacher || student) at temperature T (times T^2), a token mean over every position of text rows
  and the positions of recall rows up to their last answer (after it a row is padding);
- ``task_weight`` x the cross-entropy of the recall answers;
- ``feature_weight`` x the per-layer relative MSE of each block's output to the teacher's.

Only the branches, head-wise norms and bound tables train unless ``train_base`` (then the teacher's own weights in
the supernet train too; the KL targets always come from the untouched teacher).

The data object (`DistillData`) is issue 31's `RetrofitData`: held-out levels, text windows, seeded batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hyla.proxy_train.model.lm import HylaLM, param_groups
from hyla.proxy_train.model.loss import IGNORE
from hyla.proxy_train.supernet.choices import Sampler
from hyla.proxy_train.supernet.config import SupernetTrain
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.route import Node, run_many
from hyla.proxy_train.train.schedule import wsd_lr


class DistillBatch(Protocol):
    inputs: torch.Tensor
    targets: torch.Tensor
    n_text: int


class DistillData(Protocol):
    """Rows to distil on and to score with (issue 31's `RetrofitData` has this shape)."""

    level_names: list[str]
    generators: list[Any]
    eval: dict[str, tuple[torch.Tensor, torch.Tensor]]
    eval_text: tuple[torch.Tensor, torch.Tensor]

    def batch(self, rng: np.random.Generator, rows: int, n_text: int, admitted: int | None = None) -> DistillBatch: ...


def kl_positions(targets: torch.Tensor, n_text: int) -> torch.Tensor:
    """(B, T) bool: every position of the first ``n_text`` (text) rows; in the others (recall rows), the positions
    up to and including the row's last scored answer."""
    scored = targets != IGNORE
    t = torch.arange(targets.shape[1], device=targets.device)
    last = torch.where(scored, t, torch.full_like(t, -1)).amax(1, keepdim=True)
    mask = t <= last
    mask[:n_text] = True
    return mask


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """Token mean over ``mask`` of KL(teacher || student) of (B, T, V) logits at ``temperature``, times T^2."""
    t_logp = F.log_softmax(teacher.float() / temperature, -1)
    s_logp = F.log_softmax(student.float() / temperature, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * temperature ** 2


@torch.no_grad()
def teacher_pass(teacher: HylaLM, inputs: torch.Tensor, keep_hidden: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The teacher's logits and, when asked, every block's output."""
    x, hidden = teacher.embed(inputs), []
    for block in teacher.blocks:
        x, _ = block(x)
        if keep_hidden:
            hidden.append(x)
    return teacher.logits(x), hidden


def layout_loss(logits: torch.Tensor, t_logits: torch.Tensor, targets: torch.Tensor, is_text: torch.Tensor,
                mask: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One layout's ``(KL to the teacher over mask, cross-entropy of the recall answers)`` on its rows
    (``is_text`` (B,) marks text rows, which count for the KL only)."""
    kl = kl_to_teacher(logits, t_logits, mask, temperature)
    answers = targets.masked_fill(is_text[:, None], IGNORE)
    if not (answers != IGNORE).any():
        return kl, torch.zeros((), device=logits.device)
    return kl, F.cross_entropy(logits.float().flatten(0, 1), answers.flatten(), ignore_index=IGNORE)


class _Features:
    """``on_layer`` of `run_many`: accumulates each node's relative MSE to the teacher's block outputs."""

    def __init__(self, teacher_hidden: list[torch.Tensor], rows: list[torch.Tensor]) -> None:
        self.hidden, self.rows, self.total, self.count = teacher_hidden, rows, 0.0, 0

    def __call__(self, i: int, nodes: list[Node]) -> None:
        for node in nodes:
            ref = self.hidden[i][self.rows[node.members[0]]]
            self.total = self.total + F.mse_loss(node.x.float(), ref.float()) / ref.float().pow(2).mean().clamp(min=1e-8)
            self.count += 1

    def loss(self) -> torch.Tensor:
        return self.total / max(self.count, 1)


def distill_step_loss(net: Supernet, teacher: HylaLM, inputs: torch.Tensor, targets: torch.Tensor, n_text: int,
                      layouts: list[Any], cfg: SupernetTrain) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one step (module docstring) and its parts."""
    n_layouts = len(layouts)
    rows = [torch.arange(j, inputs.shape[0], n_layouts, device=inputs.device) for j in range(n_layouts)]
    t_logits, t_hidden = teacher_pass(teacher, inputs, cfg.feature_weight > 0)
    features = _Features(t_hidden, rows) if cfg.feature_weight > 0 else None
    nodes = run_many(net, inputs, layouts, rows=rows, on_layer=features)
    mask = kl_positions(targets, n_text)
    kl = task = torch.zeros((), device=inputs.device)
    for node in nodes:
        r = rows[node.members[0]]
        parts = layout_loss(net.base.logits(node.x), t_logits[r], targets[r], r < n_text, mask[r], cfg.temperature)
        kl, task = kl + parts[0], task + parts[1]
    kl, task = kl / n_layouts, task / n_layouts
    loss = cfg.kl_weight * kl + cfg.task_weight * task
    parts = {"kl": float(kl.detach()), "task": float(task.detach())}
    if features is not None:
        feat = features.loss()
        loss = loss + cfg.feature_weight * feat
        parts["feature"] = float(feat.detach())
    return loss, parts


def trainable(net: Supernet, train_base: bool) -> list[torch.nn.Parameter]:
    """The parameters that train: everything but ``base`` (the teacher's weights) unless ``train_base``."""
    out = []
    for name, p in net.named_parameters():
        p.requires_grad_(train_base or not name.startswith("base."))
        if p.requires_grad:
            out.append(p)
    return out


def train_supernet(net: Supernet, teacher: HylaLM, data: DistillData, sampler: Sampler, cfg: SupernetTrain,
                   device: torch.device, log: Callable[[str], None] = print, log_every: int = 50) -> dict[str, Any]:
    """Train ``net`` in place (module docstring); returns its curve (step, loss, kl, task) and wall time."""
    t0 = time.perf_counter()
    net.to(device).train()
    teacher = teacher.to(device).eval()
    params = trainable(net, cfg.train_base)
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98))
    rng = np.random.default_rng([cfg.seed, 0x5E7])
    n_text = round(cfg.batch_size * cfg.lm_share)
    curve: list[dict[str, float]] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = wsd_lr(step, cfg.steps, cfg.lr, cfg.warmup, cfg.decay_fraction, 0.1)
        layouts = [sampler(rng) for _ in range(cfg.layouts_per_step)]
        batch = data.batch(rng, cfg.batch_size, n_text)
        loss, parts = distill_step_loss(net, teacher, batch.inputs.to(device), batch.targets.to(device), batch.n_text,
                                        layouts, cfg)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"supernet: the loss became {float(loss)} at step {step}; lower "
                                     f"supernet.train.lr ({cfg.lr})")
        if loss.requires_grad:  # else every sampled layout was the teacher itself: nothing trains
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": float(loss), **parts})
            log(f"supernet step {step + 1}/{cfg.steps}: loss {float(loss):.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in parts.items()))
    net.eval()
    return {"curve": curve, "wall_s": time.perf_counter() - t0, "steps": cfg.steps}
