"""A layout's student: assembled from the teacher and the kinds' stage-1 mixers, then stage 2 end to end.

Assembly (`assemble`): the student is a `HylaLM` of the layout (with the teacher's previous-token embedding when
the teacher has one). Embeddings, norms, MLPs, the head and every attention layer are the teacher's own weights;
each linear layer ``i`` is its kind's stage-1 mixer ``i`` (`transfer.Transfer`), by default ``silent``: its
output-norm weight set to 0, so the student starts as the teacher without the replaced layers and stage 2 fades
the stand-ins in (``DistillConfig.stand_in``); forget-gate lower bounds start as in any fresh model (what stage 1
assumed). So the all-attention layout's student is the teacher, exactly.

Stage 2 (`distill`): every parameter (or only the linear mixers, ``DistillConfig.train``) trains on the KL
divergence to the teacher's next-token distribution (text rows: every position; recall rows: the answers) plus
the cross-entropy of the recall answers. The seed picks the rows and their order, nothing else: the teacher and
stage 1 are fixed per study.

Scores (`score`): held-out accuracy per level, the held-out text loss, and the KL to the teacher on held-out text
(mean over positions, nats).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hyla.config import ConfigError
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.retrofit.config import DistillConfig
from hyla.proxy_train.retrofit.data import Batch, RetrofitData
from hyla.proxy_train.retrofit.mapping import output_norm_weight
from hyla.proxy_train.retrofit.teacher import build_model, level_scores
from hyla.proxy_train.retrofit.transfer import Transfer
from hyla.proxy_train.tasks.common import IGNORE
from hyla.proxy_train.model.loss import token_loss
from hyla.space.layout import LayerSpec, Layout

_SHAPE = ("n_layers", "d_model", "num_heads", "kv_heads", "mlp_hidden", "vocab_size", "rope_theta", "norm_eps")


def check_shape(layout: Layout, teacher_layout: Layout) -> None:
    """A layout can be retrofitted only from a teacher of its own shape (one-line ConfigError otherwise)."""
    for name in _SHAPE:
        mine, theirs = getattr(layout, name), getattr(teacher_layout, name)
        if mine != theirs:
            raise ConfigError(f"retrofit: layout {layout.name or layout.key()} has {name} {mine}, the teacher "
                              f"{theirs}; a layout is retrofitted from a teacher of its own shape")
    for i, spec in enumerate(layout.layers):
        if not spec.is_attention and spec.attn_heads:
            raise ConfigError(f"retrofit: layers[{i}] is head-wise ({spec.to_obj()!r}); the retrofit maps whole "
                              "attention layers to whole linear layers only (use the recall probe for head-wise "
                              "layouts)")


def linear_specs(layout: Layout) -> list[LayerSpec]:
    """The distinct linear layer specs of a layout (one stage-1 transfer each)."""
    out: list[LayerSpec] = []
    for spec in layout.layers:
        if not spec.is_attention and spec not in out:
            out.append(spec)
    return out


@torch.no_grad()
def assemble(layout: Layout, teacher: HylaLM, transfers: dict[LayerSpec, Transfer],
             silent: bool = True) -> HylaLM:
    """The student of ``layout`` before stage 2 (module docstring); ``silent`` zeroes the stand-ins' output."""
    check_shape(layout, teacher.layout)
    student = build_model(layout, hasattr(teacher, "prev_token_embedding"))
    own = student.state_dict()
    linear = {i for i, spec in enumerate(layout.layers) if not spec.is_attention}
    for name, value in teacher.state_dict().items():
        parts = name.split(".")
        if parts[0] == "blocks" and parts[2] == "mixer" and int(parts[1]) in linear:
            continue
        own[name] = value
    student.load_state_dict(own)
    for i in sorted(linear):
        spec = layout.layers[i]
        if spec not in transfers:
            raise ConfigError(f"retrofit: no stage-1 transfer for layers[{i}] ({spec.to_obj()!r})")
        student.blocks[i].mixer.load_state_dict(transfers[spec].states[i])
        if silent:
            output_norm_weight(student.blocks[i].mixer).zero_()
    return student


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, batch: Batch, cfg: DistillConfig
                 ) -> torch.Tensor:
    """``kl_weight * KL(teacher || student)`` over the scored positions (text rows: all, recall rows: answers) at
    temperature T (times T^2), plus ``task_weight *`` the recall answers' cross-entropy."""
    T = cfg.temperature
    scored = torch.ones_like(batch.targets, dtype=torch.bool)
    scored[batch.n_text:] = batch.targets[batch.n_text:] != IGNORE
    kl = F.kl_div((student_logits / T).log_softmax(-1), (teacher_logits / T).log_softmax(-1), log_target=True,
                  reduction="none").sum(-1)
    loss = cfg.kl_weight * T * T * (kl * scored).sum() / scored.sum().clamp_min(1)
    if cfg.task_weight and batch.n_text < batch.targets.shape[0]:
        loss = loss + cfg.task_weight * token_loss(student_logits[batch.n_text:], batch.targets[batch.n_text:])
    return loss


def distill(student: HylaLM, teacher: HylaLM, cfg: DistillConfig, data: RetrofitData, seed: int, steps: int,
            device: torch.device, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Stage 2 for ``steps`` optimizer steps with the data order of ``seed`` (module docstring)."""
    t0 = time.perf_counter()
    student.to(device).train()
    teacher.to(device).eval()
    params = [p for name, p in student.named_parameters()
              if cfg.train == "all" or (".mixer." in name and not _is_attention(student, name))]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = np.random.default_rng([seed, 0xD157])
    n_text = round(cfg.batch_size * cfg.lm_share)
    warmup = max(1, steps // 10)
    last = float("nan")
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = wsd_lr(step, steps, cfg.lr, warmup, 0.5, 0.1)
        batch = data.batch(rng, cfg.batch_size, n_text)
        x = batch.inputs.to(device)
        with torch.no_grad():
            t_logits = teacher(x)[0]
        loss = distill_loss(student(x)[0], t_logits, Batch(x, batch.targets.to(device), n_text), cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = float(loss.detach())
        if log is not None and (step + 1) % 50 == 0:
            log(f"distill step {step + 1}/{steps}: loss {last:.3f}")
    for p in student.parameters():
        p.requires_grad_(True)
    return {"steps": steps, "train_loss": last, "wall_s": time.perf_counter() - t0}


def _is_attention(model: HylaLM, name: str) -> bool:
    return model.layout.layers[int(name.split(".")[1])].is_attention


@torch.no_grad()
def score(student: HylaLM, teacher: HylaLM, data: RetrofitData, device: torch.device) -> dict[str, Any]:
    """Held-out per-level accuracy, text loss and KL to the teacher on text (module docstring)."""
    student.to(device).eval()
    teacher.to(device).eval()
    x, y = (t.to(device) for t in data.eval_text)
    s_logits, t_logits = student(x)[0], teacher(x)[0]
    kl = F.kl_div(s_logits.log_softmax(-1), t_logits.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    return {"levels": level_scores(student, data, device), "lm_loss": float(token_loss(s_logits, y)),
            "kl": float(kl.mean())}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
