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

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyla.proxy_train.model.lm import HylaLM, param_groups
from hyla.proxy_train.model.loss import IGNORE, token_loss
from hyla.proxy_train.retrofit.family import suite_score
from hyla.proxy_train.supernet.config import SupernetScore, SupernetTrain
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.route import prefix_order, run_many
from hyla.proxy_train.supernet.train import DistillData, kl_positions, layout_loss, teacher_pass
from hyla.proxy_train.tasks.common import position_accuracy
from hyla.space.layout import LayerSpec


@dataclass
class EvalRows:
    """Every held-out row on the device (`eval_rows`).

    Attributes:
        inputs, targets: (N, T): the levels' examples, then the text rows.
        text: the text rows.
        teacher_logp: the teacher's log-probabilities of the text rows (fp32).
        levels: level names, in order.
        answers: (rows, cols) of every scored position of the levels scored per answer token (`position_accuracy`,
            the default), ``answer_targets`` their targets, ``answer_example`` their example (index into the levels'
            examples) and ``example_level`` each example's level index; ``example_count`` its scored positions.
        other: (level index, rows, score function) of levels with their own per-example score (RULER's spans).
        buckets: (rows, length) groups: a level's rows only matter up to its last scored position, so shorter
            levels run without their right padding (causal models: the padding never changes earlier positions).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    text: slice
    teacher_logp: torch.Tensor
    levels: list[str]
    answers: tuple[torch.Tensor, torch.Tensor]
    answer_targets: torch.Tensor
    answer_example: torch.Tensor
    example_level: torch.Tensor
    example_count: torch.Tensor
    other: list[tuple[int, slice, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]
    buckets: list[tuple[torch.Tensor, int]]

    def hidden(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """One layout's (N, T, D) last-block output from its per-bucket outputs (zeros past a bucket's length)."""
        (rows, length), x = self.buckets[0], parts[0]
        if len(parts) == 1 and length == self.inputs.shape[1]:
            return x
        out = x.new_zeros(self.inputs.shape[0], self.inputs.shape[1], x.shape[-1])
        for (rows, length), x in zip(self.buckets, parts):
            out[rows, :length] = x
        return out


@torch.no_grad()
def eval_rows(data: DistillData, teacher: HylaLM, cfg: SupernetScore, device: torch.device) -> EvalRows:
    """The first ``eval_examples`` held-out examples of each level and ``eval_text_rows`` text rows of ``data``."""
    xs, ys, other, level_of, start = [], [], [], [], 0
    for i, (name, gen) in enumerate(zip(data.level_names, data.generators)):
        x, y = data.eval[name]
        x, y = x[: cfg.eval_examples], y[: cfg.eval_examples]
        xs.append(x), ys.append(y)
        score = getattr(gen, "score", position_accuracy)
        if score is not position_accuracy:
            other.append((i, slice(start, start + len(x)), score))
        level_of += [i if score is position_accuracy else -1] * len(x)
        start += len(x)
    tx, ty = data.eval_text
    xs.append(tx[: cfg.eval_text_rows]), ys.append(ty[: cfg.eval_text_rows])
    text = slice(start, start + len(xs[-1]))
    inputs, targets = torch.cat(xs).to(device), torch.cat(ys).to(device)
    example_level = torch.tensor(level_of, dtype=torch.long, device=device)
    scored = (targets[:start] != IGNORE) & (example_level >= 0)[:, None]
    rows_, cols = scored.nonzero(as_tuple=True)
    teacher_logp = F.log_softmax(teacher.to(device).eval()(inputs[text])[0].float(), -1)
    t = torch.arange(inputs.shape[1], device=device)
    last = torch.where(targets != IGNORE, t, -1).amax(1) + 1  # a row matters up to its last scored position
    last[text] = inputs.shape[1]
    length = torch.zeros_like(last)
    ends = list(itertools.accumulate(len(x) for x in xs))
    for a, b in zip([0, *ends], ends):  # one length per level (and the text)
        length[a:b] = last[a:b].max()
    buckets = [((length == n).nonzero(as_tuple=True)[0], int(n)) for n in sorted(set(length.tolist()), reverse=True)]
    return EvalRows(inputs, targets, text, teacher_logp, list(data.level_names), (rows_, cols), targets[rows_, cols],
                    rows_, example_level, scored.sum(1), other, buckets)


@torch.no_grad()
def metrics(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], rows: EvalRows) -> dict[str, Any]:
    """A layout's scores from its last block's output ``hidden`` (N, T, D) of every eval row and its ``head``
    (final norm and LM head): logits only where something is scored (module docstring)."""
    n_levels, n_ex = len(rows.levels), len(rows.example_level)
    preds = head(hidden[rows.answers]).argmax(-1)
    hits = torch.zeros(n_ex, device=hidden.device).index_add_(0, rows.answer_example,
                                                            (preds == rows.answer_targets).float())
    valid = (rows.example_count > 0) & (rows.example_level >= 0)
    per_example = torch.where(valid, hits / rows.example_count.clamp(min=1), torch.zeros_like(hits))
    level = rows.example_level.clamp(min=0)
    sums = torch.zeros(n_levels, device=hidden.device).index_add_(0, level, per_example * valid)
    counts = torch.zeros(n_levels, device=hidden.device).index_add_(0, level, valid.float())
    text = head(hidden[rows.text]).float()
    t_logp, s_logp = rows.teacher_logp, F.log_softmax(text, -1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()
    lm = token_loss(text, rows.targets[rows.text])
    values = torch.cat([torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums)),
                        torch.stack([lm, kl])]).tolist()  # one device sync per layout
    levels = dict(zip(rows.levels, values[:n_levels]))
    for i, r, score in rows.other:  # a level with its own per-example score: its full logits
        per = score(head(hidden[r]).argmax(-1).cpu(), rows.targets[r].cpu())
        per = per[~torch.isnan(per)]
        levels[rows.levels[i]] = float(per.mean()) if len(per) else 0.0
    return {"recall": suite_score(levels), "recall_tasks": levels, "lm_val_loss": values[n_levels],
            "kl_to_teacher": values[n_levels + 1]}


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
    device = rows.inputs.device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
    was = net.training
    net.eval()
    with torch.no_grad():
        for start in range(0, len(order), cfg.chunk if finetune is None else 1):
            chunk = order[start:start + (cfg.chunk if finetune is None else 1)]
            if finetune is not None:
                model = finetune(layouts[chunk[0]]).eval()
                with autocast:
                    out[chunk[0]] = metrics(model.hidden(rows.inputs)[0], model.logits, rows)
            else:
                with autocast:
                    per_bucket = [run_many(net, rows.inputs[r, :n], [layouts[j] for j in chunk])
                                  for r, n in rows.buckets]
                for nodes in zip(*per_bucket):  # the same layouts: the same nodes, in the same order
                    with autocast:
                        scores = metrics(rows.hidden([node.x for node in nodes]), net.base.logits, rows)
                    for m in nodes[0].members:
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
