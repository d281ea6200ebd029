"""Scoring by inheritance: many layouts' held-out recall, LM loss and KL to the teacher from one supernet.

`EvalRows` puts every held-out row in one tensor once (the levels' examples, then the text rows) with the teacher's
logits of the text rows. `score_layouts` sorts the layouts so that shared prefixes sit together (`prefix_order`),
runs them ``chunk`` at a time through `route.run_many` (every layout sees every row; layouts that agree on their
first layers share those layers' work) and reads off, per layout:

- ``recall_tasks``: each level's accuracy (the level generator's ``score``, default the share of answers predicted
  exactly, averaged over examples, as `tasks.common.level_accuracy`);
- ``recall``: the mean over the levels of each task, then over tasks (`RecallSuite.evaluate`'s aggregate);
- ``lm_val_loss``: the token-mean cross-entropy on the held-out text;
- ``kl_to_teacher``: the token-mean KL(teacher || layout) on the held-out text.

With ``finetune_steps > 0`` each layout is first extracted (`Supernet.extract`) and fine-tuned on the supernet's
loss for that many steps, then scored alone (no routing, the supernet untouched).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyla.proxy_train.model.lm import HylaLM, param_groups
from hyla.proxy_train.model.loss import token_loss
from hyla.proxy_train.supernet.config import SupernetScore, SupernetTrain
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.route import prefix_order, run_many
from hyla.proxy_train.supernet.train import DistillData, kl_positions, kl_to_teacher, layout_loss, teacher_pass
from hyla.proxy_train.tasks.common import position_accuracy
from hyla.space.layout import LayerSpec


@dataclass
class EvalRows:
    """Every held-out row on the device: ``inputs``/``targets`` (N, T); ``levels`` = (name, rows, per-example score
    function); ``text`` = the text rows; ``teacher_text`` = the teacher's logits of the text rows."""

    inputs: torch.Tensor
    targets: torch.Tensor
    levels: list[tuple[str, slice, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]
    text: slice
    teacher_text: torch.Tensor


@torch.no_grad()
def eval_rows(data: DistillData, teacher: HylaLM, cfg: SupernetScore, device: torch.device) -> EvalRows:
    """The first ``eval_examples`` held-out examples of each level and ``eval_text_rows`` text rows of ``data``."""
    xs, ys, levels, start = [], [], [], 0
    for name, gen in zip(data.level_names, data.generators):
        x, y = data.eval[name]
        x, y = x[: cfg.eval_examples], y[: cfg.eval_examples]
        xs.append(x), ys.append(y)
        levels.append((name, slice(start, start + len(x)), getattr(gen, "score", position_accuracy)))
        start += len(x)
    tx, ty = data.eval_text
    xs.append(tx[: cfg.eval_text_rows]), ys.append(ty[: cfg.eval_text_rows])
    text = slice(start, start + len(xs[-1]))
    inputs, targets = torch.cat(xs).to(device), torch.cat(ys).to(device)
    teacher_text = teacher.to(device).eval()(inputs[text])[0].float()
    return EvalRows(inputs, targets, levels, text, teacher_text)


def aggregate_recall(levels: dict[str, float]) -> float:
    """Mean over the levels of each task (the level key's part before ``@``, hop counts pooled), then over tasks."""
    per_task: dict[str, list[float]] = {}
    for level, value in levels.items():
        per_task.setdefault(level.split("@", 1)[0].rstrip("0123456789"), []).append(value)
    return statistics.fmean(statistics.fmean(v) for v in per_task.values())


@torch.no_grad()
def metrics(logits: torch.Tensor, rows: EvalRows) -> dict[str, Any]:
    """A layout's scores from its logits of every eval row (module docstring)."""
    preds = logits.argmax(-1)
    levels = {}
    for name, r, score in rows.levels:
        per_example = score(preds[r].cpu(), rows.targets[r].cpu())
        per_example = per_example[~torch.isnan(per_example)]
        levels[name] = float(per_example.mean()) if len(per_example) else 0.0
    text = logits[rows.text]
    every = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
    return {"recall": aggregate_recall(levels), "recall_tasks": levels,
            "lm_val_loss": float(token_loss(text, rows.targets[rows.text])),
            "kl_to_teacher": float(kl_to_teacher(text, rows.teacher_text, every))}


def score_layouts(net: Supernet, rows: EvalRows, layouts: Sequence[Sequence[LayerSpec]], cfg: SupernetScore,
                  on_chunk: Callable[[int], None] | None = None,
                  finetune: Callable[[Sequence[LayerSpec]], HylaLM] | None = None) -> list[dict[str, Any]]:
    """Scores of every layout, in the given order (module docstring).

    Args:
        net: the trained supernet (on the rows' device).
        rows: `eval_rows`.
        layouts: layer specs per layout.
        cfg: chunk size (and fine-tune settings, used through ``finetune``).
        on_chunk: called with the number of layouts scored so far after each chunk (progress).
        finetune: layout -> its fine-tuned stand-alone model (`finetuner`); None = score by inheritance.
    """
    out: list[dict[str, Any] | None] = [None] * len(layouts)
    order = prefix_order(layouts)
    was = net.training
    net.eval()
    with torch.no_grad():
        for start in range(0, len(order), cfg.chunk if finetune is None else 1):
            chunk = order[start:start + (cfg.chunk if finetune is None else 1)]
            if finetune is not None:
                model = finetune(layouts[chunk[0]]).eval()
                out[chunk[0]] = metrics(model(rows.inputs)[0], rows)
            else:
                for node in run_many(net, rows.inputs, [layouts[j] for j in chunk]):
                    scores = metrics(net.base.logits(node.x), rows)
                    for m in node.members:
                        out[chunk[m]] = dict(scores)
            if on_chunk is not None:
                on_chunk(start + len(chunk))
    net.train(was)
    return out  # type: ignore[return-value]


def finetuner(net: Supernet, teacher: HylaLM, data: DistillData, train: SupernetTrain, cfg: SupernetScore,
              device: torch.device) -> Callable[[Sequence[LayerSpec]], HylaLM]:
    """layout -> its inherited model after ``cfg.finetune_steps`` steps of the supernet's loss (KL + answers) at the
    constant ``cfg.finetune_lr``; every layout sees the same rows (seed ``train.seed``)."""
    n_text = round(train.batch_size * train.lm_share)

    def run(layers: Sequence[LayerSpec]) -> HylaLM:
        model = net.extract(net.layout_of(layers)).to(device).train()
        linear = tuple(f"blocks.{i}.mixer." for i, s in enumerate(layers) if not s.is_attention)
        for name, p in model.named_parameters():  # what the supernet trains: branches, their norms, the bounds
            branch = name.startswith(linear) and ".mixer.attn." not in name
            p.requires_grad_(train.train_base or branch or name == "lower_bounds")
        opt = torch.optim.AdamW(param_groups(model, train.weight_decay), lr=cfg.finetune_lr, betas=(0.9, 0.98))
        rng = np.random.default_rng([train.seed, 0xF17E])
        for _ in range(cfg.finetune_steps):
            batch = data.batch(rng, train.batch_size, n_text)
            x, y = batch.inputs.to(device), batch.targets.to(device)
            with torch.enable_grad():
                t_logits = teacher_pass(teacher, x, False)[0]
                is_text = torch.arange(len(x), device=device) < batch.n_text
                kl, task = layout_loss(model(x)[0], t_logits, y, is_text, kl_positions(y, batch.n_text),
                                       train.temperature)
                loss = train.kl_weight * kl + train.task_weight * task
                opt.zero_grad(set_to_none=True)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            opt.step()
        return model

    return run
