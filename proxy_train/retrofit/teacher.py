"""The teacher: a softmax-attention Transformer of the candidates' shape, trained once on the graded recall levels
and LM text, checked to solve every level, and cached under the content hash of its recipe.

Recipe (`TeacherConfig`, the CPU experiments in ``benchmarks/results/retrofit_notes.md``): what made the recall
probe learn (a previous-token embedding, zero-initialised residual outputs, width-scaled init, a curriculum over
the levels) plus two things the teacher needs on top: recall rows alone first, at lr 3e-3 (the 24-layer model
leaves the MQAR plateau within a few hundred steps this way, and not in 1100 steps with text mixed in from the
start or at lr 1e-3), then text and recall rows together, so that it is also a language model whose logits the
students distil. A teacher below ``solved_at`` on any level is retried with the next seed (``retries``), then
refused with a one-line error naming the level, its score and what to raise; with ``unsolved: drop`` the levels
it did not solve are dropped instead (logged, recorded in the cache entry's ``dropped``, and left out of every
student's scores), so no student is scored on a level its teacher failed.

Cache: ``<cache_dir>/teacher/<key>.pt`` (weights) and ``<key>.json`` (recipe, per-level scores, the seed that
solved, wall time), ``key`` the content hash (`cache.content_key`) of the layout shape, the level set, the text,
the row length, the teacher recipe and `CODE_VERSION`. A file lock per key makes concurrent workers wait for the
one that trains it; every process then loads the same weights.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from hyla.config import ConfigError
from hyla.proxy_train.train.config import width_scaled_std
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.probe.build import PrevTokenEmbedding, zero_residual_outputs
from hyla.proxy_train.retrofit.cache import entry_path
from hyla.proxy_train.retrofit.config import RetrofitConfig, TeacherConfig
from hyla.proxy_train.retrofit.data import Batch, RetrofitData
from hyla.proxy_train.tasks.common import level_accuracy
from hyla.proxy_train.model.loss import token_loss
from hyla.space.layout import ATTN, Layout

#: changes whenever the teacher's code changes what a cached teacher is (part of its cache key)
CODE_VERSION = "teacher-3"


def teacher_layout(layout: Layout) -> Layout:
    """The all-attention layout of ``layout``'s shape (depth, width, heads, MLP, vocab)."""
    return layout.with_layers([ATTN] * layout.n_layers, name="teacher")


def build_model(layout: Layout, prev_token: bool) -> HylaLM:
    """A `HylaLM` of ``layout``, with the previous-token embedding (``prev_token_embedding``) when asked."""
    model = HylaLM(layout)
    if prev_token:
        prev = PrevTokenEmbedding(layout.vocab_size, layout.d_model, 0.02)
        model.add_module("prev_token_embedding", prev)
        model.embeddings.register_forward_hook(prev.hook)
    return model


def warmup_data(cfg: TeacherConfig, vocab_size: int, data: RetrofitData) -> RetrofitData | None:
    """The warm-up levels' rows (``cfg.warmup_levels``, recall rows only, their own row length), or None."""
    if cfg.warmup_levels is None:
        return None
    return RetrofitData(cfg.warmup_levels, vocab_size, None, data.text_config, pool_rows=data.pool_rows,
                        eval_examples=1, text_tokens=8192, eval_text_rows=1)  # text: never drawn


def init_std(cfg: TeacherConfig, d_model: int) -> float:
    return cfg.init_std if cfg.init_std is not None else width_scaled_std(d_model)


def recall_loss(logits: torch.Tensor, batch: Batch, lm_weight: float | None = None) -> torch.Tensor:
    """Text rows' token-mean cross-entropy and recall rows' answer-mean cross-entropy, mixed by row share (or by
    ``lm_weight`` for the text part): recall rows score a few answers each and would drown in one token mean."""
    n = batch.n_text
    if n == 0:
        return token_loss(logits, batch.targets)
    w = n / batch.inputs.shape[0] if lm_weight is None else lm_weight
    if n == batch.inputs.shape[0]:
        return token_loss(logits, batch.targets)
    return w * token_loss(logits[:n], batch.targets[:n]) + (1 - w) * token_loss(logits[n:], batch.targets[n:])


@torch.no_grad()
def level_scores(model: nn.Module, data: RetrofitData, device: torch.device, batch_size: int = 64,
                 examples: int | None = None) -> dict[str, float]:
    """Held-out accuracy per level (the share of answers predicted exactly, mean over the first ``examples``
    examples, all when None)."""
    was = model.training
    model.eval()
    fn = lambda x: model(x.to(device))[0]  # noqa: E731
    out = {name: level_accuracy(fn, x[:examples], y[:examples], batch_size) for name, (x, y) in data.eval.items()}
    model.train(was)
    return out


class LayerSubsets:
    """Forward hooks that zero the attention output of the layers a row does not keep (``TeacherConfig.subset_rows``).

    ``draw(rows, rng)`` picks, for a share of the rows, k random layers to keep (k uniform in 1..L); the next forward
    multiplies every other layer's mixer output of those rows by 0 (the layer adds nothing, exactly as a replaced
    layer at the retrofit's neutral start). ``clear()`` turns it off (evaluation, the teacher's logits).
    """

    def __init__(self, model: HylaLM, share: float) -> None:
        self.share, self.n_layers = share, len(model.blocks)
        self.mask: torch.Tensor | None = None
        self.handles = [b.mixer.register_forward_hook(self._hook(i)) for i, b in enumerate(model.blocks)]

    def _hook(self, i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, inputs: Any, output: tuple[torch.Tensor, Any]) -> Any:
            if self.mask is None:
                return None
            return output[0] * self.mask[:, i, None, None].to(output[0].dtype), output[1]
        return hook

    def draw(self, rows: int, rng: np.random.Generator, device: torch.device) -> None:
        L = self.n_layers
        keep = rng.integers(1, L + 1, (rows, 1))
        ranks = rng.random((rows, L)).argsort(1).argsort(1)
        mask = (ranks < keep) | (rng.random((rows, 1)) >= self.share)
        self.mask = torch.as_tensor(mask, dtype=torch.float32, device=device)

    def clear(self) -> None:
        self.mask = None

    def remove(self) -> None:
        self.clear()
        for h in self.handles:
            h.remove()


@torch.no_grad()
def single_layer_drops(model: HylaLM, data: RetrofitData, device: torch.device, examples: int = 64) -> list[float]:
    """Per layer ``i``: the mean level accuracy (first ``examples`` held-out examples per level) with layer ``i``'s
    mixer output zeroed, as a retrofit's neutral start does to a replaced layer."""
    subsets = LayerSubsets(model, 1.0)
    out = []
    try:
        for i in range(subsets.n_layers):
            mask = torch.ones(1, subsets.n_layers, device=device)
            mask[0, i] = 0.0
            subsets.mask = mask
            levels = level_scores(model, data, device, examples=examples)
            out.append(sum(levels.values()) / len(levels))
    finally:
        subsets.remove()
    return out


@dataclass
class TeacherRun:
    """A trained teacher: the model, the seed that solved, per-level scores, held-out LM loss, wall seconds."""

    model: HylaLM
    seed: int
    levels: dict[str, float]
    lm_loss: float
    wall_s: float
    cached: bool = False
    key: str = ""
    dropped: tuple[str, ...] = ()


def train_once(layout: Layout, cfg: TeacherConfig, data: RetrofitData, seed: int, device: torch.device,
               log: Callable[[str], None] = print) -> tuple[HylaLM, dict[str, float]]:
    """Train one teacher with ``seed`` (module docstring); returns it and its held-out per-level scores."""
    torch.manual_seed(seed)
    model = build_model(teacher_layout(layout), cfg.prev_token)
    model.reset_parameters(std=init_std(cfg, layout.d_model))
    if cfg.prev_token:
        nn.init.normal_(model.prev_token_embedding.weight, std=init_std(cfg, layout.d_model))
    zero_residual_outputs(model, cfg.zero_init)
    model.to(device).train()
    peak = cfg.peak_lr(layout.d_model)
    opt = torch.optim.AdamW(model.param_groups(cfg.weight_decay), lr=peak, betas=(0.9, 0.98))
    rng = np.random.default_rng([seed, 0x7EAC])
    warm = warmup_data(cfg, layout.vocab_size, data)
    n_levels = len(data.level_names)
    ramp = max(1, round(cfg.curriculum * cfg.recall_steps))
    n_text_mix = round(cfg.batch_size * cfg.lm_share)
    subsets = LayerSubsets(model, cfg.subset_rows) if cfg.subset_rows > 0 else None
    for step in range(cfg.steps):
        lr = wsd_lr(step, cfg.steps, peak, cfg.warmup, cfg.decay_fraction, 0.1)
        for group in opt.param_groups:
            group["lr"] = lr
        k = step - cfg.warmup_levels_steps  # step within the scored levels' phases
        recall_phase = k < cfg.recall_steps
        if warm is not None and k < 0:
            batch = warm.batch(rng, cfg.batch_size, 0)
        else:
            admitted = 1 + (n_levels - 1) * k // ramp if (recall_phase and cfg.curriculum) else n_levels
            batch = data.batch(rng, cfg.batch_size, 0 if recall_phase else n_text_mix, admitted)
        if subsets is not None:
            subsets.draw(cfg.batch_size, rng, device)
        logits = model(batch.inputs.to(device))[0]
        if subsets is not None:
            subsets.clear()
        loss = recall_loss(logits, Batch(batch.inputs, batch.targets.to(device), batch.n_text))
        if not torch.isfinite(loss):
            raise ConfigError(f"retrofit.teacher: the loss became {float(loss)} at step {step} (seed {seed}); "
                              f"lower retrofit.teacher.lr ({peak})")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log(f"teacher seed {seed} step {step + 1}/{cfg.steps}: loss {loss.item():.3f}")
        if cfg.check_every and (step + 1) % cfg.check_every == 0:
            levels = level_scores(model, data, device, examples=64)
            log(f"teacher seed {seed} step {step + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in levels.items()))
    if subsets is not None:
        subsets.remove()
    return model, level_scores(model, data, device)


@torch.no_grad()
def text_loss(model: nn.Module, data: RetrofitData, device: torch.device) -> float:
    """Held-out LM loss (token mean) on the validation text rows."""
    was = model.training
    model.eval()
    x, y = data.eval_text
    loss = float(token_loss(model(x.to(device))[0], y.to(device)))
    model.train(was)
    return loss


def train_teacher(layout: Layout, cfg: TeacherConfig, data: RetrofitData, device: torch.device,
                  log: Callable[[str], None] = print) -> TeacherRun:
    """Train until a seed solves every level (``seed``, then ``retries`` more); else, with ``unsolved: drop``, the
    seed that solved most levels, its unsolved levels named in ``dropped``, or a one-line ConfigError."""
    t0 = time.perf_counter()
    worst: tuple[str, float, int] = ("", 1.0, cfg.seed)
    best: tuple[int, HylaLM, dict[str, float], int] | None = None
    for seed in range(cfg.seed, cfg.seed + cfg.retries + 1):
        model, levels = train_once(layout, cfg, data, seed, device, log)
        log(f"teacher seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in levels.items()))
        failed = {k: v for k, v in levels.items() if v < cfg.solved_at}
        full = sum(levels.values()) / len(levels)
        if not failed and cfg.robust_at > 0 and cfg.solved_at > 0 and full > 0:
            drops = single_layer_drops(model, data, device)
            i = min(range(len(drops)), key=drops.__getitem__)
            log(f"teacher seed {seed}: without one layer it keeps {min(drops) / full:.2f} of its accuracy at worst "
                f"(layer {i}; robust_at {cfg.robust_at})")
            if drops[i] / full < cfg.robust_at:
                failed = {f"robustness (share kept without layer {i})": drops[i] / full}
        if not failed:
            loss = text_loss(model, data, device)  # on the device, before the model moves to the CPU
            return TeacherRun(model.cpu(), seed, levels, loss, time.perf_counter() - t0)
        if best is None or len(levels) - len(failed) > best[0]:
            best = (len(levels) - len(failed), model, levels, seed)
        name = min(failed, key=failed.get)
        worst = (name, failed[name], seed)
    if cfg.unsolved == "drop" and best is not None and best[0] > 0:
        _, model, levels, seed = best
        dropped = tuple(k for k, v in levels.items() if v < cfg.solved_at)
        log(f"teacher seed {seed}: DROPPED levels {', '.join(f'{k} ({levels[k]:.3f})' for k in dropped)} below "
            f"solved_at {cfg.solved_at} (retrofit.teacher.unsolved: drop): no student is scored on them")
        loss = text_loss(model, data, device)  # on the device, before the model moves to the CPU
        return TeacherRun(model.cpu(), seed, levels, loss, time.perf_counter() - t0, dropped=dropped)
    name, score, seed = worst
    if name.startswith("robustness"):
        raise ConfigError(f"retrofit.teacher: {name} {score:.3f} < robust_at {cfg.robust_at} (seeds {cfg.seed}.."
                          f"{cfg.seed + cfg.retries}): its retrieval sits in one layer; raise retrofit.teacher.retries "
                          f"({cfg.retries}) or recall_steps ({cfg.recall_steps}), or lower robust_at")
    raise ConfigError(f"retrofit.teacher: level {name} scored {score:.3f} < solved_at {cfg.solved_at} (seeds "
                      f"{cfg.seed}..{cfg.seed + cfg.retries}); raise retrofit.teacher.recall_steps "
                      f"({cfg.recall_steps}) or retries ({cfg.retries}), or use an easier level set than "
                      f"{name.split('@')[0]} levels")


def teacher_recipe(layout: Layout, rcfg: RetrofitConfig) -> dict[str, Any]:
    """Everything that decides a teacher: its cache key's content."""
    shape = teacher_layout(layout).to_dict()
    shape.pop("name", None)
    return {"version": CODE_VERSION, "layout": shape, "levels": rcfg.levels, "seq_len": rcfg.seq_len,
            "text": dataclasses.asdict(rcfg.text),
            "teacher": {k: v for k, v in dataclasses.asdict(rcfg.teacher).items() if k != "check_every"},
            "pool_rows": rcfg.pool_rows, "eval_examples": rcfg.eval_examples}


def load_teacher(layout: Layout, rcfg: RetrofitConfig, data: RetrofitData, device: torch.device,
                 log: Callable[[str], None] = print) -> TeacherRun:
    """The teacher of ``layout``'s shape under ``rcfg``: from the cache, or trained now (under the entry's file
    lock, so that concurrent workers train it once) and stored."""
    recipe = teacher_recipe(layout, rcfg)
    weights = entry_path("teacher", recipe, ".pt", rcfg.cache_dir)
    meta = weights.with_suffix(".json")
    key = weights.stem
    with FileLock(str(weights) + ".lock"):
        if not (weights.exists() and meta.exists()):
            log(f"teacher {key}: training ({rcfg.teacher.steps} steps, levels {rcfg.levels})")
            run = train_teacher(layout, rcfg.teacher, data, device, log)
            torch.save(run.model.state_dict(), str(weights) + ".tmp")
            (weights.parent / (weights.name + ".tmp")).replace(weights)
            info = {"recipe": recipe, "seed": run.seed, "levels": run.levels, "lm_loss": run.lm_loss,
                    "wall_s": run.wall_s, "dropped": list(run.dropped)}
            meta.with_suffix(".json.tmp").write_text(json.dumps(info, indent=1) + "\n")
            meta.with_suffix(".json.tmp").replace(meta)
            run.key = key
            return run
    info = json.loads(meta.read_text())
    model = build_model(teacher_layout(layout), rcfg.teacher.prev_token)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    log(f"teacher {key}: loaded from the cache (seed {info['seed']})")
    return TeacherRun(model, info["seed"], info["levels"], info["lm_loss"], info["wall_s"], cached=True, key=key,
                      dropped=tuple(info.get("dropped", ())))
