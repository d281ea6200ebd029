"""The probes of one layout in flight: a `ProbeStack` trains them as one stacked model and stops each on its own.

A stack holds R probes (the seeds and learning rates of one layout): one `replicas.ReplicaStack`, the rows and
learning rate of every replica at every step as tables on the device (`StepTables`), and per-replica early
stopping (`EarlyStop`). Its step (`ProbeStack.step`) gathers the step's rows and learning rates from the tables by
a device step counter, so on CUDA the whole step is captured once as a CUDA graph and replayed on the stack's own
stream (`ProbeStack.capture`). Accuracy checks are queued on that stream and read a round later (`read_checks`),
so the host never waits for the device while other stacks train. `hyla.proxy_train.probe.runner` keeps many
stacks in flight.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hyla.proxy_train.model.mixers.registry import STACKABLE
from hyla.proxy_train.probe.build import build_replicas
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.probe.levels import LevelPool, curriculum_steps, schedule
from hyla.proxy_train.probe.replicas import replica_losses
from hyla.proxy_train.tasks.common import position_accuracy
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.space.layout import Layout

#: Rows per forward when scoring (all levels share one length, so their examples go through together).
EVAL_ROWS = 512
#: Eager steps before a CUDA graph is captured (they train for real: warm-up lrs on the first rows).
WARMUP_STEPS = 3


@dataclass(frozen=True)
class ProbeJob:
    """One probe to train: ``layout`` (the user's; trained at the probe width), ``seed``, peak ``lr``; ``key`` is
    the caller's handle, returned with the result."""

    layout: Layout
    seed: int
    lr: float
    key: Any = None


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


class StepTables:
    """What every replica trains on at every step, on the device: ``rows`` ``(steps, R, batch)`` (indices into the
    `LevelPool`, `levels.schedule` by each job's seed) and ``lrs`` ``(steps, R)`` (each job's lr through
    `wsd_lr` with the probe's warm-up, decay and floor)."""

    def __init__(self, jobs: Sequence[ProbeJob], cfg: RecallProbeConfig, pool: LevelPool, dev: torch.device) -> None:
        total = cfg.steps
        rows = np.stack([schedule(cfg, len(pool.levels), pool.rows, j.seed, total) for j in jobs], 1)
        self.rows = torch.as_tensor(rows, device=dev)
        self.lrs = torch.tensor([[wsd_lr(s, total, j.lr, cfg.warmup, cfg.decay_fraction, cfg.min_lr_ratio)
                                  for j in jobs] for s in range(total)], device=dev)


class EarlyStop:
    """Which replicas still train, on the device: ``active`` (1, or 0 once solved or diverged: its lr is 0 from
    then on), ``stop_step`` (the step it stopped at, else the budget) and ``diverged``."""

    def __init__(self, n: int, total: int, dev: torch.device) -> None:
        self.active = torch.ones(n, device=dev)
        self.stop_step = torch.full((n,), total, dtype=torch.long, device=dev)
        self.diverged = torch.zeros(n, dtype=torch.bool, device=dev)

    def update(self, step: int, acc: torch.Tensor, loss: torch.Tensor, admitted: bool,
               stop_at: float) -> torch.Tensor:
        """Stop every active replica whose loss is not finite or, once every level is admitted, whose worst level
        reached ``stop_at``; returns ``active`` as it was before."""
        bad = ~torch.isfinite(loss)
        done = (bad | (acc.min(1).values >= stop_at)) if admitted else bad
        was = self.active.clone()
        newly = done & (was > 0)
        self.stop_step.masked_fill_(newly, step)
        self.diverged.logical_or_(bad & (was > 0))
        self.active.masked_fill_(newly, 0.0)
        return was


class ProbeStack:
    """The probes ``jobs`` of one layout in flight: replica r is ``jobs[r]`` (its seed's initialisation and rows,
    its lr schedule).

    Args:
        jobs: the probes (one layout, any seeds and lrs).
        cfg: the probe recipe.
        pool: the rows of every level (shared by every stack of the call).
        init_std: Linear/Embedding init std (`build.build_replicas`).
        dev: device.
        on_check: gets a line per check read (`runner.run_probes`' ``log``).
    """

    def __init__(self, jobs: Sequence[ProbeJob], cfg: RecallProbeConfig, pool: LevelPool, init_std: float | None,
                 dev: torch.device, on_check: Callable[[str], None] | None = None) -> None:
        self.jobs, self.cfg, self.pool, self.dev, self.on_check = list(jobs), cfg, pool, dev, on_check
        self.t0 = time.perf_counter()
        self.total = cfg.steps
        n, cuda = len(jobs), dev.type == "cuda"
        self.model = build_replicas(jobs[0].layout, [j.seed for j in jobs], cfg, init_std, dev)
        self.graphed = cuda and cfg.cuda_graph and cfg.kernels in STACKABLE
        self.stream = torch.cuda.Stream(dev) if cuda else None
        self.tables = StepTables(jobs, cfg, pool, dev)
        self.step_t = torch.zeros(1, dtype=torch.long, device=dev)  # the device's step counter (read by the graph)
        self.stop = EarlyStop(n, self.total, dev)
        self.bf16 = cuda and cfg.bf16
        self.autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.capture_error: str | None = None  # why the step could not be captured (it then runs eagerly)
        self.loss = torch.zeros(n, device=dev)
        self.steps = 0  # steps enqueued
        self.checks: deque[tuple[int, torch.Tensor, Any]] = deque()  # (step, host copy of the check, event)
        self.curves: list[list[list[float]]] = [[] for _ in jobs]
        self.stopped = False  # every replica solved or diverged (as read by the host)
        with self._on_stream():
            if self.graphed:
                self.capture()

    def _on_stream(self) -> Any:
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    # -- training ------------------------------------------------------------------------------------------------

    def step(self) -> torch.Tensor:
        """One training step of every replica, all on the device: gather rows, lrs, forward, backward, AdamW."""
        n, batch = len(self.jobs), self.cfg.batch_size
        idx = self.tables.rows.index_select(0, self.step_t).flatten()
        x = self.pool.x.index_select(0, idx).view(n, batch, -1)
        y = self.pool.y.index_select(0, idx).view(n, batch, -1)
        lr = self.tables.lrs.index_select(0, self.step_t).squeeze(0) * self.stop.active
        # no autocast weight cache: a capture cannot keep it, and compiled blocks would recompile for the
        # capture if the warm-up steps had it (torch.compile guards on autocast's state)
        with torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False):
            logits = self.model(x)
        losses = replica_losses(logits, y)
        losses.sum().backward()
        self.model.clip_and_step(lr, max_norm=self.cfg.grad_clip, betas=self.cfg.betas)
        self.step_t.add_(1)
        return losses.detach()

    def capture(self) -> None:
        """Warm up on this stack's stream, then capture one step. The warm-up steps train on the first rows at
        warm-up lrs; their updates are kept (`WARMUP_STEPS` of the ``steps`` already run) and the step counter
        goes on."""
        self.stream.wait_stream(torch.cuda.current_stream(self.dev))
        for _ in range(min(WARMUP_STEPS, self.total - 1)):
            self.model.zero_grad()
            self.loss = self.step()
            self.steps += 1
        self.model.zero_grad()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.loss = self.step()
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
                    self.loss = self.step()
                self.steps += 1
            if self.steps < self.total and self.cfg.eval_every:
                self.checks.append(self.check())

    # -- checks and scores ---------------------------------------------------------------------------------------

    def check(self) -> tuple[int, torch.Tensor, Any]:
        """Score the check examples and stop, on the device, every replica that solved every level (once all
        levels are admitted) or whose loss is not finite: its lr is 0 from the next step on, so where it stops
        depends on its own run only. Returns the step, a host copy (accuracies, activity before and after) and
        an event marking when the copy is ready."""
        acc = self.score(self.pool.check_x, self.pool.check_y)  # (R, levels)
        admitted = not self.cfg.curriculum or self.steps >= curriculum_steps(self.cfg, self.total)
        was = self.stop.update(self.steps, acc, self.loss, admitted, self.cfg.stop_at)
        host = torch.cat([acc.flatten(), was, self.stop.active]).to("cpu", non_blocking=True)
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
        while len(self.checks) > keep or (self.checks and _ready(self.checks[0][2])):
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

    def results(self) -> list[dict[str, Any]]:
        """Final scores on the held-out examples of every level (synchronises this stack's stream)."""
        stop = self.stop
        with self._on_stream():
            stop.diverged.logical_or_(~torch.isfinite(self.loss) & (stop.active > 0))
            accs = self.score(self.pool.eval_x.flatten(0, 1), self.pool.eval_y.flatten(0, 1)).tolist()
            steps = torch.minimum(stop.stop_step, torch.tensor(self.steps, device=self.dev)).tolist()
            diverged = stop.diverged.tolist()
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


def _ready(event: Any) -> bool:
    return event is None or event.query()
