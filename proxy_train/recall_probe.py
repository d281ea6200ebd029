"""The recall probe: MQAR trained on its own, over a difficulty sweep, scored as the area under accuracy vs pairs.

Why a probe apart from the LM proxy (../shared/REFERENCE.md, "Recall proxies"): learning MQAR is a phase
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

The model is the layout itself (its pattern of mixers and attention placement, width and depth), so placement
stays part of what is scored. ``run_probe`` is called by ``hyla.proxy_train.train.run_proxy`` for every seed.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hyla.config import ConfigError
from hyla.proxy_train.tasks.common import position_accuracy
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.space.layout import Layout


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
        curriculum: share of the steps over which harder levels are admitted (0 = all levels from the start).
        eval_examples: held-out examples per level for the final score.
        eval_every: check the levels every this many steps and stop when all reach ``stop_at`` (0 = never).
        stop_at: early-stopping accuracy (Zoology stops at 0.99).
        kernels: linear-mixer implementation on CUDA: ``torch`` (default: our PyTorch path; a probe model is
            small and its sequences short, so it is launch-bound and fla's Triton compilation, minutes per
            mixer kind in a fresh process, would dominate), ``fla`` or ``auto`` (fla's kernels).
        cuda_graph: on CUDA with ``kernels: torch``, capture the training step (forward, backward, clipping,
            AdamW) in one CUDA graph after 3 eager warm-up steps; replays remove the per-kernel launch cost.
            Falls back to eager steps if capture fails.
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
    curriculum: float = 0.25
    eval_examples: int = 256
    eval_every: int = 100
    stop_at: float = 0.99
    kernels: str = field(default="torch", metadata={"choices": ("auto", "fla", "torch")})
    cuda_graph: bool = True

    def __post_init__(self) -> None:
        w = "recall_probe"
        for name in ("seq_len", "steps", "batch_size", "eval_examples"):
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
        if self.warmup < 0 or self.eval_every < 0 or self.weight_decay < 0:
            raise ConfigError(f"{w}.warmup/eval_every/weight_decay: must be >= 0")
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


def wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float, min_ratio: float) -> float:
    """Warmup-stable-decay: linear warm-up, constant ``lr``, a cosine to ``lr * min_ratio`` over the last
    ``decay_fraction`` of the post-warm-up steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    decay_steps = max(1, round(span * decay_fraction))
    progress = (step - warmup - (span - decay_steps)) / decay_steps
    if progress <= 0:
        return lr
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _PrevTokenEmbedding(nn.Module):
    """Adds ``E_prev[x_{t-1}]`` to the token embedding output (a forward hook on ``model.embeddings``)."""

    def __init__(self, vocab_size: int, d_model: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * std)

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        prev = F.pad(ids[:, :-1], (1, 0), value=0)  # position 0 sees token 0 ("nothing before")
        return output + F.embedding(prev, self.weight).to(output.dtype)


def _level_batch(levels: list[MQAR], n_allowed: int, batch_size: int, step: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` rows split evenly over the first ``n_allowed`` levels (all of length seq_len)."""
    counts = [batch_size // n_allowed + (i < batch_size % n_allowed) for i in range(n_allowed)]
    xs, ys = [], []
    for i, n in enumerate(counts):
        if n:
            x, y = levels[i].generate(n, 2 * (seed * 1_000_003 + step * 64 + i))  # even seeds: training
            xs.append(x)
            ys.append(y)
    return torch.cat(xs), torch.cat(ys)


class _Probe:
    """One probe run (one seed): trains each learning rate from the same initialisation, keeps the best."""

    def __init__(self, layout: Layout, cfg: RecallProbeConfig, seed: int, init_std: float, dev: torch.device,
                 progress: bool) -> None:
        self.layout, self.cfg, self.seed, self.init_std, self.dev, self.progress = \
            layout, cfg, seed, init_std, dev, progress
        self.levels = cfg.levels(layout.vocab_size)
        self.autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
        self._eval: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def eval_sets(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if n not in self._eval:  # odd seeds: never a training batch
            self._eval[n] = [g.generate(n, 2 * (self.seed * 7919 + i) + 1) for i, g in enumerate(self.levels)]
        return self._eval[n]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n: int) -> list[float]:
        model.eval()
        out = []
        for x, y in self.eval_sets(n):
            accs = []
            for s in range(0, n, 64):
                with self.autocast:
                    logits = model(x[s:s + 64].to(self.dev))[0]
                accs.append(position_accuracy(logits.argmax(-1).cpu(), y[s:s + 64]))
            out.append(float(torch.cat(accs).nanmean()))
        model.train()
        return out

    def _build(self, lr: float, graph: bool) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
        from hyla.proxy_train.model import HylaLM  # the mixers import fla: only where a model is built

        cfg = self.cfg
        torch.manual_seed(self.seed)
        model = HylaLM(self.layout)
        model.reset_parameters(std=self.init_std)
        groups = model.param_groups(cfg.weight_decay)
        handle = None
        if cfg.prev_token:
            prev = _PrevTokenEmbedding(self.layout.vocab_size, self.layout.d_model, self.init_std)
            model.add_module("prev_token_embedding", prev)
            handle = model.embeddings.register_forward_hook(prev.hook)
            groups[0]["params"].append(prev.weight)
        model = model.to(self.dev)
        if graph:  # a tensor lr, updated in place, is what a captured optimizer step reads
            opt = torch.optim.AdamW(groups, lr=torch.tensor(lr, device=self.dev), betas=(0.9, 0.98),
                                    capturable=True, foreach=True)
        else:
            opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), fused=self.dev.type == "cuda")
        return model, opt, handle

    def _set_lr(self, opt: torch.optim.Optimizer, value: float) -> None:
        for g in opt.param_groups:
            if torch.is_tensor(g["lr"]):
                g["lr"].fill_(value)
            else:
                g["lr"] = value

    def _step(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
              capturing: bool = False) -> torch.Tensor:
        """Forward, loss on the answers, backward, clipping, AdamW: one training step (or its capture)."""
        ac = torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda",
                            cache_enabled=not capturing)
        with ac:
            logits = model(x)[0]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=self.dev.type == "cuda")
        opt.step()
        return loss.detach()

    def train_one(self, lr: float) -> dict[str, Any]:
        from hyla.proxy_train.mixers.common import kernel_path

        with kernel_path(self.cfg.kernels) if self.dev.type == "cuda" else nullcontext():
            return self._train_one(lr)

    def _train_one(self, lr: float) -> dict[str, Any]:
        cfg, dev = self.cfg, self.dev
        want_graph = cfg.cuda_graph and dev.type == "cuda" and cfg.kernels == "torch"
        model, opt, handle = self._build(lr, want_graph)
        ramp = max(1, round(cfg.curriculum * cfg.steps))
        n_levels = len(self.levels)
        graph: torch.cuda.CUDAGraph | None = None
        static: tuple[torch.Tensor, torch.Tensor] | None = None
        loss: torch.Tensor | None = None
        curve: list[list[float]] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, disable=not self.progress, desc=f"recall probe lr {lr:g}", leave=False)
        step = 0
        model.train()
        for step in range(cfg.steps):
            n_allowed = min(n_levels, 1 + (n_levels - 1) * step // ramp) if cfg.curriculum else n_levels
            x, y = _level_batch(self.levels, n_allowed, cfg.batch_size, step, self.seed)
            self._set_lr(opt, wsd_lr(step, cfg.steps, lr, cfg.warmup, cfg.decay_fraction, 0.1))
            if graph is not None:
                static[0].copy_(x, non_blocking=True)
                static[1].copy_(y, non_blocking=True)
                graph.replay()
            else:
                opt.zero_grad(set_to_none=True)
                loss = self._step(model, opt, x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
                if want_graph and step == 2:  # three eager steps warm up the optimizer state, then capture
                    graph, static, loss = self._capture(model, opt, x, y)
            bar.update(1)
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
                if loss is not None and not torch.isfinite(loss):
                    return {"lr": lr, "score": 0.0, "levels": [0.0] * n_levels, "steps": step + 1,
                            "diverged": True, "curve": curve, "cuda_graph": graph is not None}
                accs = self.evaluate(model, min(64, cfg.eval_examples))
                curve.append([step + 1, sum(accs) / len(accs)])
                bar.set_postfix(acc=f"{curve[-1][1]:.3f}")
                if n_allowed == n_levels and min(accs) >= cfg.stop_at:
                    break
        bar.close()
        diverged = loss is not None and not bool(torch.isfinite(loss))
        accs = [0.0] * n_levels if diverged else self.evaluate(model, cfg.eval_examples)
        if handle is not None:
            handle.remove()
        score = sum(accs) / len(accs)
        curve.append([step + 1, score])
        return {"lr": lr, "score": score, "levels": accs, "steps": step + 1, "diverged": diverged, "curve": curve,
                "cuda_graph": graph is not None}

    def _capture(self, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
                 ) -> tuple[torch.cuda.CUDAGraph | None, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Capture one training step; (None, None, None) if the model cannot be captured (eager steps go on)."""
        static = (x.to(self.dev).clone(), y.to(self.dev).clone())
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.dev)
        opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                loss = self._step(model, opt, *static, capturing=True)
        except Exception:  # noqa: BLE001 - a mixer with a host sync cannot be captured: stay eager
            opt.zero_grad(set_to_none=True)
            return None, None, None
        return graph, static, loss


def run_probe(layout: Layout, cfg: RecallProbeConfig, seed: int, init_std: float, dev: torch.device,
              progress: bool = False) -> dict[str, Any]:
    """Train and score the recall probe of ``layout`` for one seed.

    Returns:
        ``recall`` (best mean accuracy over the levels), ``levels`` (level key -> accuracy of the best LR),
        ``lr`` (the best LR), ``per_lr`` (every LR's score, steps run and learning curve) and ``wall_s``.
    """
    t0 = time.perf_counter()
    probe = _Probe(layout, cfg, seed, init_std, dev, progress)
    runs = [probe.train_one(lr) for lr in cfg.lrs]
    best = max(runs, key=lambda r: r["score"])
    return {"recall": best["score"], "lr": best["lr"],
            "levels": {g.level: acc for g, acc in zip(probe.levels, best["levels"])},
            "per_lr": [{k: r[k] for k in ("lr", "score", "steps", "diverged", "curve", "cuda_graph")} for r in runs],
            "wall_s": time.perf_counter() - t0}
