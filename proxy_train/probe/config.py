"""The recall probe: MQAR trained on its own, over a difficulty sweep, scored as the area under accuracy vs pairs.

Why a probe apart from the LM proxy (Zoology, Arora et al. 2023; MAD, Poli et al. 2024): learning MQAR is a phase
transition (an induction circuit forms after a plateau) whose timing depends on seed, depth and learning rate
more than on the architecture. A recall score taken from a short LM run with a few recall rows mixed in
therefore measures luck: on an H100 the paper grid's Transformer stayed on the plateau (0.065) while every
DeltaNet layout, whose short convolution gives a free previous-token path, solved it. The probe removes the
parts of that outcome that are not the architecture's, with the levers the field uses:

- **Recall alone** (Zoology, MAD): the layout is trained on MQAR only, with a loss on the answers only.
- **The same previous-token help for every layout** (``prev_token``): a learned embedding of the previous token
  is added to the token embedding, the part of the induction circuit a short convolution gives DeltaNet/GDN for
  free. A single attention layer (or a linear state) then only has to store and look up ``key -> value``, which
  is what the score should measure. It is a probe-only module: the layout, its parameters and its memory are
  unchanged.
- **A difficulty sweep** (Zoology): levels with more pairs at one length; the score is the mean accuracy over
  the levels, i.e. the normalised area under the accuracy-vs-pairs curve. Attention stays near 1 at every
  level, a fixed-size state falls off as the pairs outgrow it, so pure linear mixers are graded by capacity
  rather than "solved or not yet".
- **A curriculum** (``curriculum``): training starts on the easiest level and admits harder ones over the first
  part of the steps, so the easy levels form the circuit early and reliably.
- **Best of a few learning rates** (MAD, Zoology; ``lrs``): each LR trains from the same initialisation, the
  best score counts.
- **Long enough for the transition**, with early stopping once every level is solved (``stop_at``).

The model is the layout's own pattern of mixers and attention placement at its depth, optionally narrowed to
``width`` (a narrower model is faster and its fixed-size states fill at fewer pairs), so placement stays part of
what is scored. The narrowed mixers take the width's default heads, whose states keep the ratios they have at
340M (GLA, GDN, HGRN-2 and DeltaNet equal, RetNet 4x: `hyla.space.mixer_kinds`), so no kind gains memory by the
narrowing. ``hyla.proxy_train.probe.runner`` trains probes side by side on one device (``run_probe_seeds``:
every seed and LR of a trial, called by ``hyla.proxy_train.proxy.run.run_proxy``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hyla.proxy_train.train.schedule import wsd_lr  # noqa: F401 (re-exported: probe_runner, tests)
from hyla.proxy_train.model.mixers.common import KERNELS
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.space.layout import ATTN, Layout
from torch import nn

from hyla.config import ConfigError


@dataclass(frozen=True, kw_only=True)
class RecallProbeConfig:
    """How the recall probe trains and scores (module docstring).

    Attributes:
        seq_len: MQAR length T of every level.
        pairs: key-value pairs of the levels (the difficulty sweep), easiest first.
        task_vocab: MQAR symbols (keys: lower half, values: upper half); None = 4 x the largest ``pairs``.
        steps: optimizer steps per learning rate.
        batch_size: MQAR rows per step.
        lrs: peak learning rates tried; the best score counts.
        warmup: linear warm-up steps.
        decay_fraction: share of the last steps with a cosine decay to 10 % (warmup-stable-decay).
        weight_decay: AdamW decay on matrices.
        prev_token: add a learned previous-token embedding (the same help for every layout).
        zero_init: residual output projections that start at zero (`zero_residual_outputs`): ``none``,
            ``linear`` (the purely linear layers' mixers: a hybrid starts as its attention layers alone) or ``all``.
        curriculum: share of the steps over which harder levels are admitted (0 = all levels from the start).
        eval_examples: held-out examples per level for the final score.
        eval_every: check the levels every this many steps and stop when all reach ``stop_at`` (0 = never).
        stop_at: early-stopping accuracy (Zoology stops at 0.99).
        kernels: linear-mixer implementation on CUDA (``mixers.common.KERNELS``): ``torch`` (our forward and
            PyTorch scans: no Triton compilation, tens of thousands of small kernels per stacked step),
            ``cores`` (our forward, fla's scan kernels with the replica axis folded into the batch:
            ``mixers.scans``), or ``fla``/``auto`` (fla's layers; no stacking). ``torch`` and ``cores`` stack.
        cuda_graph: on CUDA with ``kernels: torch`` or ``cores``, capture the training step (batch gather, lr, forward,
            backward, clipping, AdamW) in one CUDA graph after 3 eager warm-up steps; replays remove the
            per-kernel launch cost. Falls back to eager steps if capture fails.
        compile: on CUDA with ``kernels: torch`` or ``cores``, train through ``torch.compile`` of each distinct block
            (``ReplicaStack(compile_blocks=True)``: one compile per layer spec and process, reused by every
            layout that has the spec; Inductor fuses the scans' elementwise work). Checks and scores stay eager.
        width: train the layout's pattern at this d_model (`probe_layout`: mixers, attention placement and
            head shares kept, depth kept); None = the layout's own width.
        heads: the probe model's ``num_heads`` at ``width`` (None = the layout's, narrowed). Fewer, wider
            attention heads (e.g. 1 x 64) give one attention layer more room to tell the task's symbols apart.
        concurrent: probes trained side by side on one CUDA device (``hyla.proxy_train.probe.runner``: the
            seeds and lrs of one layout as one stacked model, each stack on its own stream); 0 = all probes of a
            call. CPU runs one stack after another.
        pool_rows: training examples generated per level (shared by the probes of a call; each draws its own rows).
        pool_seed: seed of those examples and of the held-out examples (the same exam for every layout and seed).
        scan_chunk: chunk length of the PyTorch scans (``mixers.common.scan_chunk``); None = each scan's
            default. Longer chunks: fewer, larger kernels, more memory per probe.
        bf16: on CUDA, bf16 autocast; false = fp32 with TF32 matmuls (no casts: fewer kernels per step).
    """

    seq_len: int = 256
    pairs: tuple[int, ...] = (4, 8, 16, 32, 64)
    task_vocab: int | None = None
    steps: int = 1000
    batch_size: int = 64
    lrs: tuple[float, ...] = (1e-3,)
    warmup: int = 50
    decay_fraction: float = 0.2
    weight_decay: float = 0.0
    prev_token: bool = True
    zero_init: str = field(default="none", metadata={"choices": ("none", "linear", "all")})
    curriculum: float = 0.25
    eval_examples: int = 256
    eval_every: int = 100
    stop_at: float = 0.99
    kernels: str = field(default="torch", metadata={"choices": KERNELS})
    cuda_graph: bool = True
    compile: bool = True
    width: int | None = None
    heads: int | None = None
    concurrent: int = 16
    pool_rows: int = 16384
    pool_seed: int = 0
    scan_chunk: int | None = None
    bf16: bool = True

    def __post_init__(self) -> None:
        w = "recall_probe"
        for name in ("seq_len", "steps", "batch_size", "eval_examples", "pool_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{w}.{name}: {getattr(self, name)} must be >= 1")
        if not self.pairs or sorted(set(self.pairs)) != list(self.pairs) or self.pairs[0] < 1:
            raise ConfigError(f"{w}.pairs: {list(self.pairs)} must be distinct positive counts, easiest first")
        if self.seq_len % 2 or self.seq_len < 4 * self.pairs[-1]:
            raise ConfigError(f"{w}.seq_len: {self.seq_len} must be even and >= 4 x the largest pairs "
                              f"({4 * self.pairs[-1]})")
        if not self.lrs or not all(lr > 0 for lr in self.lrs):
            raise ConfigError(f"{w}.lrs: {list(self.lrs)} must be one or more positive learning rates")
        if self.task_vocab is not None and self.task_vocab < 2 * self.pairs[-1]:
            raise ConfigError(f"{w}.task_vocab: {self.task_vocab} must be >= 2 x the largest pairs "
                              f"({2 * self.pairs[-1]}) or null")
        if not 0.0 < self.decay_fraction <= 1.0 or not 0.0 <= self.curriculum <= 1.0:
            raise ConfigError(f"{w}.decay_fraction/curriculum: {self.decay_fraction}/{self.curriculum} must be in "
                              "(0, 1] / [0, 1]")
        if self.warmup < 0 or self.eval_every < 0 or self.weight_decay < 0 or self.concurrent < 0:
            raise ConfigError(f"{w}.warmup/eval_every/weight_decay/concurrent: must be >= 0")
        if self.scan_chunk is not None and self.scan_chunk < 1:
            raise ConfigError(f"{w}.scan_chunk: {self.scan_chunk} must be >= 1 or null")
        if self.width is not None and self.width < 8:
            raise ConfigError(f"{w}.width: {self.width} must be >= 8 or null (the layout's own width)")
        if self.heads is not None and self.heads < 1:
            raise ConfigError(f"{w}.heads: {self.heads} must be >= 1 or null (the layout's own heads)")
        if not 0.0 < self.stop_at <= 1.0:
            raise ConfigError(f"{w}.stop_at: {self.stop_at} must be in (0, 1]")

    @property
    def symbols(self) -> int:
        """MQAR symbols used by every level."""
        return self.task_vocab if self.task_vocab is not None else 4 * self.pairs[-1]

    def levels(self, vocab_size: int) -> list[MQAR]:
        """The sweep's MQAR generators, easiest first (ConfigError if the symbols do not fit the vocab)."""
        if self.symbols > vocab_size:
            raise ConfigError(f"recall_probe.task_vocab: {self.symbols} symbols exceed the layout's vocab_size "
                              f"{vocab_size}; lower task_vocab or the largest pairs")
        return [MQAR(vocab_size=vocab_size, seq_len=self.seq_len, num_kv_pairs=p, task_vocab=self.symbols)
                for p in self.pairs]


class _PrevTokenEmbedding(nn.Module):
    """Adds ``E_prev[x_{t-1}]`` to the token embedding output (a forward hook on ``model.embeddings``)."""

    def __init__(self, vocab_size: int, d_model: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * std)

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        prev = F.pad(ids[:, :-1], (1, 0), value=0)  # position 0 sees token 0 ("nothing before")
        return output + F.embedding(prev, self.weight).to(output.dtype)


class LevelPool:
    """The training rows of every level (``pool_rows`` each, seeded by ``pool_seed``) on the device, plus one
    fixed held-out set per level for the checks and the final score."""

    def __init__(self, cfg: RecallProbeConfig, vocab_size: int, dev: torch.device) -> None:
        self.levels = cfg.levels(vocab_size)
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
    ramp = max(1, round(cfg.curriculum * steps))
    step = np.arange(steps)[:, None]
    allowed = np.minimum(n_levels, 1 + (n_levels - 1) * step // ramp) if cfg.curriculum else np.full_like(step, n_levels)
    level = np.arange(cfg.batch_size)[None, :] % allowed
    return level * rows + rng.integers(0, rows, (steps, cfg.batch_size))


@torch.no_grad()
def zero_residual_outputs(model: nn.Module, which: str) -> None:
    """Zero the residual output projections (``o_proj``/``out_proj`` of the mixer, ``down_proj`` of the MLP) of
    ``model``'s blocks: ``linear`` = the mixers of linear layers only, ``all`` = every mixer and MLP, ``none`` =
    nothing. A zeroed branch adds nothing at the start and grows from its first gradient step (as in ReZero or
    modded-nanogpt's zero-initialised projections). On CPU, a 24-layer RetNet hybrid left the MQAR plateau within
    500 steps with ``linear`` and not within 600 without it (one seed; ``benchmarks/results/probe_depth_cpu``)."""
    if which == "none":
        return
    from hyla.proxy_train.model.lm import _RESIDUAL_PROJ

    for block in model.blocks:
        spec = model.layout.layers[block.index]
        linear = spec.mixer != ATTN and not spec.attn_heads  # a head-wise layer keeps its attention heads' output
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] not in _RESIDUAL_PROJ or not isinstance(module, nn.Linear):
                continue
            if which == "all" or (linear and name.startswith("mixer")):
                module.weight.zero_()


def probe_layout(layout: Layout, cfg: RecallProbeConfig) -> Layout:
    """The model a probe trains: ``layout`` itself, or its pattern at ``cfg.width`` (`presets.at_scale`: the
    mixer per layer, attention placement, head-wise shares and windows kept; width-derived mixer options at the
    new width's defaults; depth and vocab kept, heads kept unless ``cfg.heads``, the MLP scaled with the width)."""
    width, heads = cfg.width or layout.d_model, cfg.heads or layout.num_heads
    if width == layout.d_model and heads == layout.num_heads:
        return layout
    from hyla.space.presets import Scale, at_scale

    if width % heads:
        raise ConfigError(f"recall_probe.width: {width} must be a multiple of the probe's num_heads {heads} "
                          f"(recall_probe.heads, or the layout's)")
    mlp = max(8, round(layout.mlp_hidden * width / layout.d_model / 8) * 8)
    scale = Scale(f"probe{width}x{heads}", layout.n_layers, width, heads, mlp, layout.vocab_size)
    return at_scale(layout, scale, name=layout.name)


def curve_auc(curve: Sequence[Sequence[float]], total: int) -> float:
    """Area under a probe's learning curve, as a share of its step budget: the trapezoid through ``(0, 0)`` and
    the ``[step, accuracy]`` points (checks, then the final score at the step the probe stopped), the final score
    held until ``total`` (an early-stopped probe keeps what it solved). In [0, 1]: 1 = solved from the start, the
    final accuracy = solved only at the end; it grades how early the recall transition came, where the final
    score only says whether it came."""
    if total <= 0:
        raise ValueError(f"curve_auc: total steps {total} must be positive")
    area, prev_s, prev_a = 0.0, 0.0, 0.0
    for step, acc in curve:
        step = min(float(step), float(total))
        area += (step - prev_s) * (acc + prev_a) / 2
        prev_s, prev_a = step, acc
    return (area + (total - prev_s) * prev_a) / total


def best_of_lrs(runs: list[dict[str, Any]], levels: list[MQAR], wall_s: float) -> dict[str, Any]:
    """One seed's probe result from its runs at every lr (`run_probes` results): the best score counts."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    if not ok:
        raise torch.OutOfMemoryError(runs[0].get("fail_reason", "out of memory"))
    best = max(ok, key=lambda r: r["score"])
    return {"recall": best["score"], "lr": best["lr"], "auc": best["auc"],
            "levels": {g.level: acc for g, acc in zip(levels, best["levels"])},
            "per_lr": [{k: r[k] for k in ("lr", "score", "auc", "steps", "diverged", "curve", "cuda_graph")}
                       for r in ok],
            "wall_s": wall_s}
