"""Many recall probes in one process: every (layout, seed, learning rate) of a call trains side by side.

A probe model is small (the layout's pattern at the probe width) and its sequences short, so one probe leaves a
GPU mostly idle: its step is thousands of tiny kernels (launch-bound), not FLOPs. `run_probes` therefore keeps up
to ``RecallProbeConfig.concurrent`` probes in flight on one device:

- **One CUDA graph per probe.** The whole training step (batch gather, learning rate, forward, loss on the
  answers, backward, clipping, AdamW, step counter) is captured once after a few eager warm-up steps, so a step
  costs one graph launch and no host work: the batch rows and learning rates of every step are precomputed
  tables on the device (`stack.StepTables`), indexed inside the graph by a device step counter.
- **One CUDA stream per probe.** Graph replays of different probes run concurrently on the GPU; the host
  enqueues ``eval_every`` steps per probe, then an accuracy check whose result it reads a round later
  (non-blocking), so early stopping never drains the GPU.
- **Shared data.** The training rows of every level are generated once per call (`levels.LevelPool`) and kept on the
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
from typing import Any

import torch

from hyla.proxy_train.model.mixers.common import kernel_path, scan_chunk
from hyla.proxy_train.model.mixers.registry import STACKABLE
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.probe.levels import LevelPool, probe_levels
from hyla.proxy_train.probe.stack import ProbeJob, ProbeStack
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.space.layout import Layout

#: Probes built per round while others train (building one is ~1 s of host work: eager warm-up and capture).
ADMIT_PER_ROUND = 2


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
        (`stack.curve_auc`), ``cuda_graph``, ``lr``, ``seed``, ``wall_s`` (from the probe's start), or ``status: oom``
        with a reason; a job left unstarted by ``stop`` has None.
    """
    if not jobs:
        return []
    vocab = {j.layout.vocab_size for j in jobs}
    if len(vocab) > 1:
        raise ValueError(f"run_probes: jobs of one call must share a vocab size, got {sorted(vocab)}")
    from tqdm.auto import tqdm

    pool = LevelPool(cfg, vocab.pop(), dev)
    cuda = dev.type == "cuda"
    limit = (cfg.concurrent or len(jobs)) if cuda else 1
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    queue = deque(_stacks(jobs, limit if cuda and cfg.kernels in STACKABLE else 1 if cuda else len(jobs)))
    active: list[tuple[list[int], ProbeStack]] = []
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
                    active.append((ix, ProbeStack([jobs[i] for i in ix], cfg, pool, init_std, dev, log)))
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


def _round(stack: ProbeStack, chunk: int) -> None:
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
    (`run_probes`).

    Returns:
        One dict per seed: ``recall`` (best mean accuracy over the levels), ``levels`` (level key -> accuracy of
        the best LR), ``lr`` (the best LR), ``auc`` (the best LR's `stack.curve_auc`), ``per_lr`` (every LR's score,
        steps run and learning curve) and ``wall_s`` (of the whole call).

    Raises:
        torch.OutOfMemoryError: a seed whose every lr ran out of memory.
    """
    t0 = time.perf_counter()
    jobs = [ProbeJob(layout, seed, lr) for seed in seeds for lr in cfg.lrs]
    runs = run_probes(jobs, cfg, dev, init_std, progress)
    levels = probe_levels(cfg, layout.vocab_size)
    wall = time.perf_counter() - t0
    return [best_of_lrs([r for r in runs if r["seed"] == seed], levels, wall) for seed in seeds]


def run_probe(layout: Layout, cfg: RecallProbeConfig, seed: int, init_std: float | None, dev: torch.device,
              progress: bool = False) -> dict[str, Any]:
    """Train and score the recall probe of ``layout`` for one seed (see `run_probe_seeds`)."""
    return run_probe_seeds(layout, cfg, [seed], init_std, dev, progress)[0]


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
