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
``kernels: fla``/``auto`` (fla's layers, which vmap cannot batch: one probe per stack) the CUDA steps are eager
too. Results do not depend on which probes share the device: a probe's
initialisation, rows and schedule are fixed by its seed.
"""

from __future__ import annotations

import contextvars
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hyla.proxy_train.model.mixers.common import STACKABLE
from hyla.proxy_train.probe.config import (
    LevelPool,
    RecallProbeConfig,
    _PrevTokenEmbedding,
    best_of_lrs,
    curve_auc,
    probe_layout,
    schedule,
    wsd_lr,
    zero_residual_outputs,
)
from hyla.proxy_train.probe.replicas import ReplicaStack, replica_losses
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


class _Stack:
    """The probes of one layout in flight, stacked into one model (`ReplicaStack`): their tables, stream and
    (on CUDA) captured step. Replica r is ``jobs[r]``: its seed's initialisation and rows, its lr schedule."""

    def __init__(self, jobs: Sequence[ProbeJob], cfg: RecallProbeConfig, pool: LevelPool, init_std: float | None,
                 dev: torch.device, on_check: Callable[[str], None] | None = None) -> None:
        self.jobs, self.cfg, self.pool, self.dev = list(jobs), cfg, pool, dev
        self.t0 = time.perf_counter()
        self.total = cfg.steps
        lay = probe_layout(jobs[0].layout, cfg)
        std = init_std if init_std is not None else 0.02 * (1024 / lay.d_model) ** 0.5

        def add_prev_token(model: nn.Module) -> None:
            prev = _PrevTokenEmbedding(lay.vocab_size, lay.d_model, std)
            model.add_module("prev_token_embedding", prev)
            model.embeddings.register_forward_hook(prev.hook)

        cuda, stacked = dev.type == "cuda", cfg.kernels in STACKABLE
        self.model = ReplicaStack(lay, [j.seed for j in jobs], std, cfg.weight_decay, dev,
                                  [lambda m: zero_residual_outputs(m, cfg.zero_init),
                                   *([add_prev_token] if cfg.prev_token else [])],
                                  vectorise=not cuda or stacked,
                                  compile_blocks=cuda and cfg.compile and stacked)
        self.graphed = cuda and cfg.cuda_graph and stacked
        self.stream = torch.cuda.Stream(dev) if cuda else None
        n = len(jobs)
        rows = np.stack([schedule(cfg, len(pool.levels), pool.rows, j.seed, self.total) for j in jobs], 1)
        self.rows = torch.as_tensor(rows, device=dev)  # (steps, R, batch)
        lrs = [[wsd_lr(s, self.total, j.lr, cfg.warmup, cfg.decay_fraction, 0.1) for j in jobs]
               for s in range(self.total)]
        self.lr_table = torch.tensor(lrs, device=dev)  # (steps, R)
        self.step_t = torch.zeros(1, dtype=torch.long, device=dev)
        self.active = torch.ones(n, device=dev)  # 0 once a replica is solved or diverged: its lr is 0 from then
        self.stop_step = torch.full((n,), self.total, dtype=torch.long, device=dev)
        self.diverged = torch.zeros(n, dtype=torch.bool, device=dev)
        self.bf16 = cuda and cfg.bf16
        self.autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_error: str | None = None  # why the step could not be captured (it then runs eagerly)
        self.on_check = on_check  # gets a line per check read (`run_probes`' ``log``)
        self.loss = torch.zeros(n, device=dev)
        self.steps = 0  # steps enqueued
        self.checks: deque[tuple[int, torch.Tensor, Any]] = deque()  # (step, host copy of the check, event)
        self.curves: list[list[list[float]]] = [[] for _ in jobs]
        self.stopped = False  # every replica solved or diverged (as read by the host)
        with self._on_stream():
            if self.graphed:
                self._capture()

    def _on_stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _step(self) -> torch.Tensor:
        """One training step of every replica, all on the device: gather rows, lrs, forward, backward, AdamW."""
        n, batch = len(self.jobs), self.cfg.batch_size
        idx = self.rows.index_select(0, self.step_t).flatten()
        x = self.pool.x.index_select(0, idx).view(n, batch, -1)
        y = self.pool.y.index_select(0, idx).view(n, batch, -1)
        lr = self.lr_table.index_select(0, self.step_t).squeeze(0) * self.active
        # no autocast weight cache: a capture cannot keep it, and compiled blocks would recompile for the
        # capture if the warm-up steps had it (torch.compile guards on autocast's state)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.model(x)
        losses = replica_losses(logits, y)
        losses.sum().backward()
        self.model.clip_and_step(lr)
        self.step_t.add_(1)
        return losses.detach()

    def _capture(self) -> None:
        """Warm up on this stack's stream, then capture one step. The warm-up steps train on the first rows at
        warm-up lrs; their updates are kept (3 of the ``steps`` already run) and the step counter goes on."""
        self.stream.wait_stream(torch.cuda.current_stream(self.dev))
        for _ in range(min(3, self.total - 1)):
            self.model.zero_grad()
            self.loss = self._step()
            self.steps += 1
        self.model.zero_grad()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.loss = self._step()
        except Exception as e:  # noqa: BLE001 - a mixer with a host sync cannot be captured: stay eager
            self.graphed = False
            self.capture_error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            self.model.zero_grad()
            return
        # capture ran nothing, but the counter's add_ did not run either: the next replay is step `steps`
        self.graph = graph

    def advance(self, n: int) -> None:
        """Enqueue up to ``n`` more steps, then (if steps remain) a check on the stack's stream."""
        n = min(n, self.total - self.steps)
        with self._on_stream():
            for _ in range(n):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self.model.zero_grad()
                    self.loss = self._step()
                self.steps += 1
            if self.steps < self.total and self.cfg.eval_every:
                self.checks.append(self._check())

    def _check(self) -> tuple[int, torch.Tensor, Any]:
        """Score the check examples and stop, on the device, every replica that solved every level (once all
        levels are admitted) or whose loss is not finite: its lr is 0 from the next step on, so where it stops
        depends on its own run only. Returns the step, a host copy (accuracies, activity before and after) and
        an event marking when the copy is ready."""
        acc = self.score(self.pool.check_x, self.pool.check_y)  # (R, levels)
        ramp = max(1, round(self.cfg.curriculum * self.total))
        admitted = not self.cfg.curriculum or self.steps >= ramp
        bad = ~torch.isfinite(self.loss)
        done = (bad | (acc.min(1).values >= self.cfg.stop_at)) if admitted else bad
        was = self.active.clone()
        newly = done & (was > 0)
        self.stop_step.masked_fill_(newly, self.steps)
        self.diverged.logical_or_(bad & (was > 0))
        self.active.masked_fill_(newly, 0.0)
        host = torch.cat([acc.flatten(), was, self.active]).to("cpu", non_blocking=True)
        event = None
        if self.stream is not None:
            event = torch.cuda.Event()
            event.record(self.stream)
        return self.steps, host, event

    @torch.no_grad()
    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accuracy per replica and level, ``(R, levels)`` (mean over the level's examples), on the device."""
        self.model.train(False)
        n, out = len(self.jobs), []
        rows = max(8, EVAL_ROWS // n)
        for s in range(0, x.shape[0], rows):
            with self.autocast:
                pred = self.model(x[s:s + rows].unsqueeze(0).expand(n, -1, -1)).argmax(-1)
            out.append(position_accuracy(pred, y[s:s + rows]))
        self.model.train(True)
        return torch.cat(out, 1).view(n, len(self.pool.levels), -1).nanmean(2)

    def read_checks(self, keep: int) -> None:
        """Read finished checks, oldest first, until at most ``keep`` are in flight; note when all have stopped."""
        n, n_levels = len(self.jobs), len(self.pool.levels)
        while len(self.checks) > keep or (self.checks and self._ready(self.checks[0][2])):
            step, host, event = self.checks.popleft()
            if event is not None:
                event.synchronize()
            acc = host[:n * n_levels].view(n, n_levels).mean(1).tolist()
            was, now = host[n * n_levels:n * n_levels + n].tolist(), host[n * n_levels + n:]
            for r in range(n):
                if was[r]:
                    self.curves[r].append([step, acc[r]])
            if self.on_check is not None:
                self.on_check(f"{self.jobs[0].layout.name} step {step}: "
                              + " ".join(f"{a:.3f}" if w else "stopped" for a, w in zip(acc, was)))
            if not bool(now.any()):
                self.stopped = True
                return

    @staticmethod
    def _ready(event: Any) -> bool:
        return event is None or event.query()

    def results(self) -> list[dict[str, Any]]:
        """Final scores on the held-out examples of every level (synchronises this stack's stream)."""
        with self._on_stream():
            self.diverged.logical_or_(~torch.isfinite(self.loss) & (self.active > 0))
            accs = self.score(self.pool.eval_x.flatten(0, 1), self.pool.eval_y.flatten(0, 1)).tolist()
            steps = torch.minimum(self.stop_step, torch.tensor(self.steps, device=self.dev)).tolist()
            diverged = self.diverged.tolist()
        out = []
        for r, job in enumerate(self.jobs):
            levels = [0.0] * len(accs[r]) if diverged[r] else accs[r]
            score = sum(levels) / len(levels)
            curve = [*self.curves[r], [steps[r], score]]
            out.append({"lr": job.lr, "seed": job.seed, "score": score, "levels": levels, "steps": steps[r],
                        "diverged": diverged[r], "curve": curve, "auc": curve_auc(curve, self.total),
                        "cuda_graph": self.graph is not None, "stacked": len(self.jobs),
                        "wall_s": time.perf_counter() - self.t0})
        return out


def run_probes(jobs: Sequence[ProbeJob], cfg: RecallProbeConfig, dev: torch.device, init_std: float | None = None,
               progress: bool = False, on_result: Callable[[ProbeJob, dict[str, Any]], None] | None = None,
               stop: Callable[[], bool] | None = None,
               log: Callable[[str], None] | None = None) -> list[dict[str, Any] | None]:
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
        log: called with one line per stack and check read (layout, step, each replica's mean check accuracy):
            progress of long runs, e.g. into a benchmark's log.

    Returns:
        One result per job, in order: ``score`` (mean accuracy over the levels), ``levels`` (accuracy per level,
        easiest first), ``steps`` run, ``diverged``, ``curve`` (``[step, mean check accuracy]``), ``auc``
        (`curve_auc`), ``cuda_graph``, ``lr``, ``seed``, ``wall_s`` (from the probe's start), or ``status: oom``
        with a reason; a job left unstarted by ``stop`` has None.
    """
    if not jobs:
        return []
    vocab = {j.layout.vocab_size for j in jobs}
    if len(vocab) > 1:
        raise ValueError(f"run_probes: jobs of one call must share a vocab size, got {sorted(vocab)}")
    from hyla.proxy_train.model.mixers.common import kernel_path, scan_chunk
    from tqdm.auto import tqdm

    pool = LevelPool(cfg, vocab.pop(), dev)
    cuda = dev.type == "cuda"
    limit = (cfg.concurrent or len(jobs)) if cuda else 1
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    queue = deque(_stacks(jobs, limit if cuda and cfg.kernels in STACKABLE else 1 if cuda else len(jobs)))
    active: list[tuple[list[int], _Stack]] = []
    chunk = cfg.eval_every or cfg.steps
    bar = tqdm(total=len(jobs), disable=not progress, desc="recall probes", leave=False)
    with kernel_path(cfg.kernels) if cuda else nullcontext(), scan_chunk(cfg.scan_chunk), _tf32(not cfg.bf16):
        threads = ThreadPoolExecutor(max_workers=min(limit, 16)) if cuda else None
        while queue or active:
            if stop is not None and queue and stop():
                queue.clear()
            admitted = 0  # a few per round, so the stacks already running train while the next ones build
            while queue and (admitted < ADMIT_PER_ROUND or not active) and (
                    not active or sum(len(ix) for ix, _ in active) + len(queue[0]) <= limit):
                ix = queue.popleft()
                admitted += 1
                try:
                    active.append((ix, _Stack([jobs[i] for i in ix], cfg, pool, init_std, dev, log)))
                except torch.OutOfMemoryError as e:
                    if active:  # the device is full: wait for a stack to finish, then retry this one
                        queue.appendleft(ix)
                        limit = sum(len(a) for a, _ in active)
                        break
                    for i in ix:
                        results[i] = {"lr": jobs[i].lr, "seed": jobs[i].seed, "status": "oom", "score": None,
                                      "fail_reason": str(e).splitlines()[0][:300] if str(e) else "out of memory"}
                        _finish(jobs[i], results[i], on_result, bar)
            stacks = [st for _, st in active]
            if threads is None:
                for st in stacks:
                    _round(st, chunk)
            else:  # graph launches release the GIL: one host thread per stack keeps every stream fed
                contexts = [contextvars.copy_context() for _ in stacks]  # kernel_path/scan_chunk for each thread
                list(threads.map(lambda c, st: c.run(_round, st, chunk), contexts, stacks))
            for entry in [e for e in active if e[1].stopped or e[1].steps >= e[1].total]:
                active.remove(entry)
                ix, st = entry
                st.read_checks(keep=0)
                for i, res in zip(ix, st.results()):
                    results[i] = {"status": "ok", **res}
                    _finish(jobs[i], results[i], on_result, bar)
                del st, entry
        if threads is not None:
            threads.shutdown()
    bar.close()
    return results


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 matmuls while ``enabled`` (probes in fp32, ``bf16: false``); the caller's setting is restored. With bf16
    the scans' fp32 matmuls keep the caller's precision."""
    before = torch.get_float32_matmul_precision()
    if enabled:
        torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _stacks(jobs: Sequence[ProbeJob], size: int) -> list[list[int]]:
    """Job indices grouped into stacks of at most ``size``: jobs of one layout (any seed or lr) share a stack."""
    by_layout: dict[Layout, list[int]] = {}
    for i, job in enumerate(jobs):
        by_layout.setdefault(job.layout, []).append(i)
    return [ix[s:s + size] for ix in by_layout.values() for s in range(0, len(ix), max(1, size))]


def _round(stack: _Stack, chunk: int) -> None:
    """Read the stack's previous check (one may stay in flight), then enqueue its next ``chunk`` steps."""
    stack.read_checks(keep=1)
    if not stack.stopped:
        stack.advance(chunk)


def _finish(job: ProbeJob, result: dict[str, Any], on_result: Callable[..., None] | None, bar: Any) -> None:
    bar.update(1)
    if on_result is not None:
        on_result(job, result)


def run_probe_seeds(layout: Layout, cfg: RecallProbeConfig, seeds: list[int], init_std: float | None,
                    dev: torch.device, progress: bool = False) -> list[dict[str, Any]]:
    """The recall probe of ``layout`` for every seed (each the best of ``cfg.lrs``), trained side by side
    (`hyla.proxy_train.probe.runner.run_probes`).

    Returns:
        One dict per seed: ``recall`` (best mean accuracy over the levels), ``levels`` (level key -> accuracy of
        the best LR), ``lr`` (the best LR), ``auc`` (the best LR's `curve_auc`), ``per_lr`` (every LR's score,
        steps run and learning curve) and ``wall_s`` (of the whole call).

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
