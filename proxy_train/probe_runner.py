"""Many recall probes in one process: every (layout, seed, learning rate) of a call trains side by side.

A probe model is small (the layout's pattern at the probe width) and its sequences short, so one probe leaves a
GPU mostly idle: its step is thousands of tiny kernels (launch-bound), not FLOPs. `run_probes` therefore keeps up
to ``RecallProbeConfig.concurrent`` probes in flight on one device:

- **One CUDA graph per probe.** The whole training step (batch gather, learning rate, forward, loss on the
  answers, backward, clipping, AdamW, step counter) is captured once after a few eager warm-up steps, so a step
  costs one graph launch and no host work: the batch rows and learning rates of every step are precomputed
  tables on the device (`schedule`, ``wsd_lr``), indexed inside the graph by a device step counter.
- **One CUDA stream per probe.** Graph replays of different probes run concurrently on the GPU; the host
  enqueues ``eval_every`` steps per probe, then an accuracy check whose result it reads a round later
  (non-blocking), so early stopping never drains the GPU.
- **Shared data.** The training rows of every level are generated once per call (`LevelPool`) and kept on the
  device; each probe draws its own rows from them (its seed picks the rows and the order). Every probe is scored
  on the same held-out examples, so layouts are compared on one exam.

On CPU (tests, laptops) the same code runs the probes one step at a time, eagerly; with ``cuda_graph: false`` or
``kernels: fla`` the CUDA steps are eager too. Results do not depend on which probes share the device: a probe's
initialisation, rows and schedule are fixed by its seed.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hyla.proxy_train.recall_probe import RecallProbeConfig, _PrevTokenEmbedding, probe_layout, wsd_lr
from hyla.proxy_train.tasks.common import position_accuracy
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.space.layout import Layout
from torch import nn

#: Probes built per round while others train (building one is ~1 s of host work: eager warm-up and capture).
ADMIT_PER_ROUND = 2
#: Rows per forward when scoring (all levels share one length, so their examples go through together).
EVAL_ROWS = 512


@dataclass(frozen=True)
class ProbeJob:
    """One probe to train: ``layout`` (the user's; trained at the probe width), ``seed``, peak ``lr``; ``key`` is
    the caller's handle, returned with the result."""

    layout: Layout
    seed: int
    lr: float
    key: Any = None


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


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any) -> torch.Tensor:
    """Per-example share of answers right (`tasks.common.position_accuracy`), on the device."""
    out = []
    for s in range(0, x.shape[0], EVAL_ROWS):
        with autocast:
            pred = model(x[s:s + EVAL_ROWS])[0].argmax(-1)
        out.append(position_accuracy(pred, y[s:s + EVAL_ROWS]))
    return torch.cat(out)


class _Run:
    """One probe in flight: its model, optimizer, tables, stream and (on CUDA) captured step."""

    def __init__(self, job: ProbeJob, cfg: RecallProbeConfig, pool: LevelPool, init_std: float | None,
                 dev: torch.device) -> None:
        from hyla.proxy_train.model import HylaLM  # the mixers import fla: only where a model is built

        self.job, self.cfg, self.pool, self.dev = job, cfg, pool, dev
        self.t0 = time.perf_counter()
        self.total = cfg.steps
        lay = probe_layout(job.layout, cfg)
        torch.manual_seed(job.seed)  # the same initialisation for every lr of a seed
        model = HylaLM(lay)
        std = init_std if init_std is not None else 0.02 * (1024 / lay.d_model) ** 0.5
        model.reset_parameters(std=std)
        groups = model.param_groups(cfg.weight_decay)
        if cfg.prev_token:
            prev = _PrevTokenEmbedding(lay.vocab_size, lay.d_model, std)
            model.add_module("prev_token_embedding", prev)
            model.embeddings.register_forward_hook(prev.hook)
            groups[0]["params"].append(prev.weight)
        self.model = model.to(dev).train()
        cuda = dev.type == "cuda"
        self.graphed = cuda and cfg.cuda_graph and cfg.kernels == "torch"
        self.stream = torch.cuda.Stream(dev) if cuda else None
        self.rows = torch.as_tensor(schedule(cfg, len(pool.levels), pool.rows, job.seed, self.total), device=dev)
        self.lrs = [wsd_lr(s, self.total, job.lr, cfg.warmup, cfg.decay_fraction, 0.1) for s in range(self.total)]
        self.lr_table = torch.tensor(self.lrs, device=dev)
        self.lr = torch.tensor(self.lrs[0], device=dev)
        self.step_t = torch.zeros(1, dtype=torch.long, device=dev)
        self.opt = torch.optim.AdamW(groups, lr=self.lr if self.graphed else self.lrs[0], betas=(0.9, 0.98),
                                     capturable=self.graphed, foreach=cuda)
        if self.graphed:
            for g in self.opt.param_groups:  # one lr tensor, written inside the graph, read by every group
                g["lr"] = self.lr
        self.autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.loss: torch.Tensor | None = None
        self.steps = 0  # steps enqueued
        self.checks: deque[tuple[int, torch.Tensor, Any]] = deque()  # (step, per-example accuracy, event)
        self.curve: list[list[float]] = []
        self.stopped = self.diverged = False
        with self._on_stream():
            if self.graphed:
                self._capture()

    def _on_stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _step(self, capturing: bool = False) -> torch.Tensor:
        """One training step, all on the device: gather the step's rows, set its lr, forward, backward, AdamW."""
        idx = self.rows.index_select(0, self.step_t).squeeze(0)
        x, y = self.pool.x.index_select(0, idx), self.pool.y.index_select(0, idx)
        if self.graphed:
            self.lr.copy_(self.lr_table.index_select(0, self.step_t).squeeze(0))
        ac = torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.dev.type == "cuda",
                            cache_enabled=not capturing)
        with ac:
            logits = self.model(x)[0]
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=self.dev.type == "cuda")
        self.opt.step()
        self.step_t.add_(1)
        return loss.detach()

    def _capture(self) -> None:
        """Warm up on this probe's stream, then capture one step. The warm-up steps train on the first rows at
        warm-up lrs; their updates are kept (3 of the ``steps`` already run) and the step counter goes on."""
        self.stream.wait_stream(torch.cuda.current_stream(self.dev))
        for _ in range(3):
            self.opt.zero_grad(set_to_none=True)
            self.loss = self._step()
            self.steps += 1
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.loss = self._step(capturing=True)
        except Exception:  # noqa: BLE001 - a mixer with a host sync cannot be captured: stay eager
            self.graphed = False
            self.opt.zero_grad(set_to_none=True)
            for g in self.opt.param_groups:
                g["lr"] = float(self.lr)
            return
        # capture ran nothing, but the counter's add_ did not run either: the next replay is step `steps`
        self.graph = graph

    def advance(self, n: int) -> None:
        """Enqueue up to ``n`` more steps, then (if steps remain) an accuracy check on the probe's stream."""
        n = min(n, self.total - self.steps)
        with self._on_stream():
            for _ in range(n):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    if not self.graphed:
                        for g in self.opt.param_groups:
                            g["lr"] = self.lrs[self.steps]
                    self.opt.zero_grad(set_to_none=True)
                    self.loss = self._step()
                self.steps += 1
            if self.steps < self.total and self.cfg.eval_every:
                acc = self.score(self.pool.check_x, self.pool.check_y)
                loss = self.loss.reshape(1).float() if self.loss is not None else torch.zeros(1, device=self.dev)
                host = torch.cat([acc, loss]).to("cpu", non_blocking=True)
                event = torch.cuda.Event() if self.stream is not None else None
                if event is not None:
                    event.record(self.stream)
                self.checks.append((self.steps, host, event))

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accuracy per level (mean over that level's examples), on the device."""
        self.model.eval()
        acc = _accuracy(self.model, x, y, self.autocast).view(len(self.pool.levels), -1).nanmean(1)
        self.model.train()
        return acc

    def read_checks(self, keep: int) -> None:
        """Read finished checks, oldest first, until at most ``keep`` are in flight; stop on success/divergence."""
        while len(self.checks) > keep or (self.checks and self._ready(self.checks[0][2])):
            step, host, event = self.checks.popleft()
            if event is not None:
                event.synchronize()
            accs, loss = host[:-1].tolist(), float(host[-1])
            if not np.isfinite(loss):
                self.diverged = self.stopped = True
                return
            self.curve.append([step, sum(accs) / len(accs)])
            ramp = max(1, round(self.cfg.curriculum * self.total))
            all_admitted = not self.cfg.curriculum or step >= ramp
            if all_admitted and min(accs) >= self.cfg.stop_at:
                self.stopped = True
                return

    @staticmethod
    def _ready(event: Any) -> bool:
        return event is None or event.query()

    def result(self) -> dict[str, Any]:
        """Final score on the held-out examples of every level (synchronises this probe's stream)."""
        n_levels = len(self.pool.levels)
        with self._on_stream():
            if self.diverged or (self.loss is not None and not bool(torch.isfinite(self.loss))):
                accs, self.diverged = [0.0] * n_levels, True
            else:
                accs = self.score(self.pool.eval_x.flatten(0, 1), self.pool.eval_y.flatten(0, 1)).tolist()
        score = sum(accs) / n_levels
        self.curve.append([self.steps, score])
        return {"lr": self.job.lr, "seed": self.job.seed, "score": score, "levels": accs, "steps": self.steps,
                "diverged": self.diverged, "curve": self.curve, "cuda_graph": self.graph is not None,
                "wall_s": time.perf_counter() - self.t0}


def run_probes(jobs: Sequence[ProbeJob], cfg: RecallProbeConfig, dev: torch.device, init_std: float | None = None,
               progress: bool = False, on_result: Callable[[ProbeJob, dict[str, Any]], None] | None = None,
               stop: Callable[[], bool] | None = None) -> list[dict[str, Any] | None]:
    """Train and score every job's probe, up to ``cfg.concurrent`` at a time on ``dev`` (module docstring).

    Args:
        jobs: the probes; their layouts must share a vocab size (one data pool serves them all).
        cfg: the probe recipe (steps, levels, curriculum, early stop, concurrency).
        dev: device.
        init_std: Linear/Embedding init std; None = width-scaled ``0.02 * sqrt(1024 / probe width)``.
        progress: a progress bar over the probes.
        on_result: called with each job and its result as soon as it finishes (e.g. to append a record).
        stop: polled between rounds; once it returns True no further probe starts (those running finish), and
            the jobs never started get no result.

    Returns:
        One result per job, in order: ``score`` (mean accuracy over the levels), ``levels`` (accuracy per level,
        easiest first), ``steps`` run, ``diverged``, ``curve`` (``[step, mean check accuracy]``), ``cuda_graph``,
        ``lr``, ``seed``, ``wall_s`` (from the probe's start), or ``status: oom`` with a reason; a job left
        unstarted by ``stop`` has None.
    """
    if not jobs:
        return []
    vocab = {j.layout.vocab_size for j in jobs}
    if len(vocab) > 1:
        raise ValueError(f"run_probes: jobs of one call must share a vocab size, got {sorted(vocab)}")
    from hyla.proxy_train.mixers.common import kernel_path, scan_chunk
    from tqdm.auto import tqdm

    pool = LevelPool(cfg, vocab.pop(), dev)
    limit = (cfg.concurrent or len(jobs)) if dev.type == "cuda" else 1
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    queue = deque(range(len(jobs)))
    active: dict[int, _Run] = {}
    chunk = cfg.eval_every or cfg.steps
    bar = tqdm(total=len(jobs), disable=not progress, desc="recall probes", leave=False)
    with kernel_path(cfg.kernels) if dev.type == "cuda" else nullcontext(), scan_chunk(cfg.scan_chunk):
        threads = ThreadPoolExecutor(max_workers=min(limit, 16)) if dev.type == "cuda" else None
        while queue or active:
            if stop is not None and queue and stop():
                queue.clear()
            admitted = 0  # a few per round, so the probes already running train while the next ones build
            while queue and len(active) < limit and (admitted < ADMIT_PER_ROUND or not active):
                i = queue.popleft()
                admitted += 1
                try:
                    active[i] = _Run(jobs[i], cfg, pool, init_std, dev)
                except torch.OutOfMemoryError as e:
                    if active:  # the device is full: wait for a probe to finish, then retry this one
                        queue.appendleft(i)
                        limit = len(active)
                        break
                    results[i] = {"lr": jobs[i].lr, "seed": jobs[i].seed, "status": "oom", "score": None,
                                  "fail_reason": str(e).splitlines()[0][:300] if str(e) else "out of memory"}
                    _finish(jobs[i], results[i], on_result, bar)
            runs = list(active.values())
            if threads is None:
                for run in runs:
                    _round(run, chunk)
            else:  # graph launches release the GIL: one host thread per probe keeps every stream fed
                contexts = [contextvars.copy_context() for _ in runs]  # kernel_path/scan_chunk for each thread
                list(threads.map(lambda c, r: c.run(_round, r, chunk), contexts, runs))
            for i in [i for i, r in active.items() if r.stopped or r.steps >= r.total]:
                run = active.pop(i)
                run.read_checks(keep=0)
                results[i] = {"status": "ok", **run.result()}
                _finish(jobs[i], results[i], on_result, bar)
                del run
        if threads is not None:
            threads.shutdown()
    bar.close()
    return results


def _round(run: _Run, chunk: int) -> None:
    """Read the probe's previous check (one may stay in flight), then enqueue its next ``chunk`` steps."""
    run.read_checks(keep=1)
    if not run.stopped:
        run.advance(chunk)


def _finish(job: ProbeJob, result: dict[str, Any], on_result: Callable[..., None] | None, bar: Any) -> None:
    bar.update(1)
    if on_result is not None:
        on_result(job, result)


def best_of_lrs(runs: list[dict[str, Any]], levels: list[MQAR], wall_s: float) -> dict[str, Any]:
    """One seed's probe result from its runs at every lr (`run_probes` results): the best score counts."""
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    if not ok:
        raise torch.OutOfMemoryError(runs[0].get("fail_reason", "out of memory"))
    best = max(ok, key=lambda r: r["score"])
    return {"recall": best["score"], "lr": best["lr"],
            "levels": {g.level: acc for g, acc in zip(levels, best["levels"])},
            "per_lr": [{k: r[k] for k in ("lr", "score", "steps", "diverged", "curve", "cuda_graph")} for r in ok],
            "wall_s": wall_s}


def run_probe_seeds(layout: Layout, cfg: RecallProbeConfig, seeds: list[int], init_std: float | None,
                    dev: torch.device, progress: bool = False) -> list[dict[str, Any]]:
    """The recall probe of ``layout`` for every seed (each the best of ``cfg.lrs``), trained side by side
    (`hyla.proxy_train.probe_runner.run_probes`).

    Returns:
        One dict per seed: ``recall`` (best mean accuracy over the levels), ``levels`` (level key -> accuracy of
        the best LR), ``lr`` (the best LR), ``per_lr`` (every LR's score, steps run and learning curve) and
        ``wall_s`` (of the whole call).

    Raises:
        torch.OutOfMemoryError: a seed whose every lr ran out of memory.
    """
    t0 = time.perf_counter()
    jobs = [ProbeJob(layout, seed, lr) for seed in seeds for lr in cfg.lrs]
    runs = run_probes(jobs, cfg, dev, init_std, progress)
    levels = cfg.levels(layout.vocab_size)
    wall = time.perf_counter() - t0
    return [best_of_lrs([r for r in runs if r["seed"] == seed], levels, wall) for seed in seeds]


def run_probe(layout: Layout, cfg: RecallProbeConfig, seed: int, init_std: float | None, dev: torch.device,
              progress: bool = False) -> dict[str, Any]:
    """Train and score the recall probe of ``layout`` for one seed (see `run_probe_seeds`)."""
    return run_probe_seeds(layout, cfg, [seed], init_std, dev, progress)[0]
