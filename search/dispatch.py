"""The one scheduler of proxy runs on a `WorkerPool`: jobs go to ready workers as they free up, and each finished
run comes back as an `Outcome`.

`drive` serves the search's rung driver (`hyla.search.study`: trials asked lazily, retried after a worker death)
and the benchmarks (a fixed list of jobs, a wall-clock deadline) alike. It owns what both need from Ray: which
slots are free, waiting on running runs and on starting workers together, replacing the actor of a run whose
process died (its slot takes jobs again once the new actor answers `ready`), and turning Ray's errors into
outcomes. What a job is, how it is submitted and what an outcome means stay the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray

from hyla.search.workers import WorkerPool


@dataclass(frozen=True)
class Outcome:
    """How one submitted run ended.

    Attributes:
        kind: ``result`` (``value`` is the worker's answer), ``died`` (the worker process died: its actor is being
            replaced) or ``error`` (another Ray error; the worker lives on).
        slot: the pool slot that ran it.
        value: the answer (``result`` only).
        error: one line (``died``, ``error``).
        node: `WorkerPool.nodes` of the slot when the run was submitted (where it ran).
    """

    kind: str
    slot: int
    value: Any = None
    error: str = ""
    node: dict[str, Any] | None = None


def _first_line(e: BaseException, last: bool = False) -> str:
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = text.splitlines()
    return (lines[-1] if last else lines[0])[:200]


def drive(pool: WorkerPool, next_job: Callable[[], Any | None], submit: Callable[[int, Any], ray.ObjectRef],
          on_outcome: Callable[[Any, Outcome], None], *, deadline: float | None = None,
          can_start: Callable[[], bool] | None = None, on_ready: Callable[[int], None] | None = None) -> list[Any]:
    """Run jobs on ``pool`` until there is none left and none running, or until ``deadline``.

    Args:
        pool: the workers (idle between calls: every ready slot is free).
        next_job: the next job to start, or None when there is none now (it may have one again after an outcome).
        submit: ``(slot, job) -> ObjectRef`` of the run on that slot's actor.
        on_outcome: ``(job, Outcome)`` for every finished run, as it finishes (may raise to stop everything).
        deadline: a ``time.monotonic()`` after which no job starts and the call returns, runs still going.
        can_start: asked before each start; False = start nothing more for now.
        on_ready: called with a slot whose (re)started worker has just become ready.

    Returns:
        The jobs taken from ``next_job`` that did not finish: still running at the deadline, or held for a free
        worker when it passed.
    """
    free = pool.ready_slots()
    running: dict[ray.ObjectRef, tuple[int, Any, dict[str, Any] | None]] = {}
    held: Any = None  # a job taken while no worker was free

    def open_() -> bool:
        return (deadline is None or time.monotonic() < deadline) and (can_start is None or can_start())

    while True:
        while free and open_():
            job, held = (held if held is not None else next_job()), None
            if job is None:
                break
            slot = free.pop()
            running[submit(slot, job)] = (slot, job, pool.nodes[slot])
        if not running:
            if free or not open_():
                return [] if held is None else [held]
            held = held if held is not None else next_job()
            if held is None:
                return []
            if not pool.starting:
                raise RuntimeError("no proxy worker is running or starting")  # the pool always restarts one
        timeout = None if deadline is None else max(0.05, deadline - time.monotonic())
        done, _ = ray.wait([*running, *pool.starting], num_returns=1, timeout=timeout)
        if not done:  # the deadline passed
            return [job for _, job, _ in running.values()] + ([] if held is None else [held])
        ref = done[0]
        if ref in pool.starting:  # a (re)started worker answered: ready, or failed to start and restarted
            slot = pool.started(ref)
            if slot is not None:
                free.append(slot)
                if on_ready is not None:
                    on_ready(slot)
            continue
        slot, job, node = running.pop(ref)
        try:
            outcome = Outcome("result", slot, value=ray.get(ref), node=node)
            free.append(slot)
        except ray.exceptions.RayActorError as e:  # the process died (segfault, OOM killer, a lost node ...)
            pool.replace(slot)
            outcome = Outcome("died", slot, error=_first_line(e), node=node)
        except ray.exceptions.RayError as e:
            free.append(slot)
            outcome = Outcome("error", slot, error=f"{type(e).__name__}: {_first_line(e, last=True)}", node=node)
        on_outcome(job, outcome)
