"""The ask/tell driver: rung by rung, ask Optuna for layouts, train proxies on Ray workers, tell the results.

Rungs are separate Optuna studies named ``"<name>/rung<r>"`` (every trial also carries a ``rung`` user attr).
Why one study per rung: a sampler must only see values of one fidelity - mixing a 10x longer proxy's losses into
rung 0's history would mislead TPE. Rung 0 samples; rung r+1 only replays rung r's promotion set (enqueued with
the same params, user attr ``parent`` = trial number in rung r), so rung r+1 reproduces exactly those layouts.

Resume is the normal path: running the same config again reloads every rung study. Trials left RUNNING by a dead
driver are failed with ``fail_reason="driver stopped"`` and enqueued again once; such trials never count toward
``n_trials`` (which counts completed + failed), so nothing is counted twice and no completed trial is redone.
Rung 0 asks only for layouts it does not have yet (`hyla.search.fresh`: a repeated proposal is told PRUNED with
``repeat_of`` and not counted). In later rungs a layout already completed is not retrained: its stored result is
told again (user attr ``reused_from``).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.trial import FrozenTrial, TrialState

from hyla.config import ConfigError, dump_yaml
from hyla.metrics import METRICS
from hyla.proxy_train.proxy.recall import batch_size
from hyla.search.config import StudyConfig
from hyla.search.dispatch import Outcome, drive
from hyla.search.fresh import FreshAsk
from hyla.search.rungs import select_promoted
from hyla.search.prepare import Prepared, prepare
from hyla.search.storage import open_study
from hyla.search.workers import WorkerPool, start_pool

DRIVER_STOPPED = "driver stopped"


@dataclass
class _Job:
    trial: optuna.Trial
    layout: Any
    key: str
    attempts: int = 0
    slot: int = -1
    deaths: list[dict[str, Any]] = field(default_factory=list)  # where and how its workers died


@dataclass
class RungSummary:
    """Counts of one rung after a driver pass."""

    rung: int
    completed: int = 0
    failed: int = 0
    reused: int = 0
    retried: int = 0
    repeats: int = 0  # proposals of a layout the rung already had: pruned, not trained (`hyla.search.fresh`)
    exhausted: bool = False  # the space has no layout the rung lacks: it ended before n_trials


@dataclass
class SearchSummary:
    """What `run_search` did; ``pareto`` holds the final rung's non-dominated trials."""

    rungs: list[RungSummary] = field(default_factory=list)
    pareto: list[FrozenTrial] = field(default_factory=list)
    pareto_rung: int = 0
    full_run_specs: list[str] = field(default_factory=list)


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count toward n_trials: completed + failed, except failures caused by a stopped driver."""
    return sum(1 for t in trials if t.state == TrialState.COMPLETE
               or (t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") != DRIVER_STOPPED))


def objective_values(prep: Prepared, layout: Any, result: dict[str, Any]) -> list[float]:
    """Trial values in objective order; exact metrics (memory, params) from the cost formulas at the study's context,
    the others from the proxy result's field (`hyla.metrics`)."""
    from hyla.space.cost import inference_memory, param_count

    costs: dict[str, Any] = {}
    out: list[float] = []
    for name in prep.cfg.objectives:
        metric = METRICS[name]
        if metric.cost is not None:
            report, attr = metric.cost
            if report not in costs:
                costs[report] = (inference_memory(layout, prep.cfg.context) if report == "memory"
                                 else param_count(layout))
            v = getattr(costs[report], attr)
        else:
            v = result.get(metric.field)
        if v is None or not math.isfinite(float(v)):
            raise ValueError(f"objective {name} is {v!r} in the proxy result")
        out.append(float(v))
    return out


def result_sems(prep: Prepared, result: dict[str, Any]) -> list[float | None]:
    """Standard error of each trial value (objective order): the proxy's seed spread for its measured scores,
    0 for exact costs (memory, params), None where unknown (one seed, throughput)."""
    sem = result.get("sem") or {}
    return [0.0 if METRICS[name].exact else sem.get(METRICS[name].field) for name in prep.cfg.objectives]


def _recover_stale(study: optuna.Study) -> int:
    """Fail trials left RUNNING by a dead driver and enqueue each once more with its params and links."""
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in stale:
        study._storage.set_trial_user_attr(t._trial_id, "fail_reason", DRIVER_STOPPED)
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        attrs = {k: t.user_attrs[k] for k in ("parent", "preset") if k in t.user_attrs}
        study.enqueue_trial(dict(t.params), user_attrs={**attrs, "requeued_from": t.number})
    return len(stale)


def _enqueue_seeds(prep: Prepared, study: optuna.Study) -> None:
    from hyla.search.prepare import layout_params

    for preset, layout in prep.seed_layouts:
        params = layout_params(prep, layout, preset)
        if params is not None:
            study.enqueue_trial(params, user_attrs={"preset": preset, "parent": None}, skip_if_exists=True)


def _enqueue_promoted(prep: Prepared, rung: int, prev: optuna.Study, study: optuna.Study,
                      first: optuna.Study) -> int:
    """Enqueue rung-(rung-1) promotion set into ``study`` (each parent once, across resumes); ``first``: rung 0,
    whose spread scales the knee-first cut (`hyla.search.rungs`)."""
    promote = prep.cfg.rungs[rung - 1].promote
    picked = select_promoted(prev.get_trials(deepcopy=False), prep.cfg.directions, prep.cfg.objectives,
                             promote.rule, promote.k, promote.objective, noise=promote.noise, z=promote.noise_z,
                             context=first.get_trials(deepcopy=False))
    have = {t.user_attrs.get("parent") for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("fail_reason") != DRIVER_STOPPED}
    new = 0
    for p in picked:
        if p.number in have:
            continue
        study.enqueue_trial(dict(p.params), user_attrs={"parent": p.number, "preset": p.user_attrs.get("preset")})
        new += 1
    return new


class _RungDriver:
    """Drives one rung study to completion with a bounded number of trials in flight."""

    def __init__(self, prep: Prepared, rung: int, study: optuna.Study, pool: WorkerPool, progress: Any,
                 console: Any = None) -> None:
        self.prep, self.rung, self.study, self.pool, self.progress = prep, rung, study, pool, progress
        self.console = console
        self.summary = RungSummary(rung)
        trials = study.get_trials(deepcopy=False)
        self.done_by_key: dict[str, FrozenTrial] = {t.user_attrs["layout_key"]: t for t in trials
                                                    if t.state == TrialState.COMPLETE and "layout_key" in t.user_attrs}
        self.counted = counted(trials)
        self.in_flight: dict[int, _Job] = {}  # trial number -> job
        self.dups: dict[str, list[_Job]] = collections.defaultdict(list)
        self.queue: collections.deque[_Job] = collections.deque()
        self.proxy = prep.proxies[rung]
        self.fresh = FreshAsk(study, prep.space, prep.cfg.seed) if rung == 0 else None
        if self.fresh is not None:
            self.fresh.sweep(self.done_by_key, prep.cfg.n_trials)
        #: trials per worker call: 1, or many when the rung's recall family scores many at once (supernet)
        self.batch = batch_size(self.proxy)
        self.task = progress.add_task(f"rung {rung}", total=self._target(), completed=self.counted) if progress else None

    def _waiting(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _target(self) -> int:
        if self.rung == 0:
            return max(self.prep.cfg.n_trials, self.counted)
        return self.counted + self._waiting()

    def _pending(self) -> int:
        return len(self.in_flight) + len(self.queue) + sum(map(len, self.dups.values()))

    def _more_to_ask(self) -> bool:
        if self.fresh is not None:
            return not self.fresh.exhausted and self.counted + self._pending() < self.prep.cfg.n_trials
        return self._waiting() > 0  # later rungs only replay enqueued (promoted) trials

    def _have(self) -> dict[str, int]:
        """Layout key -> trial number of every layout the rung has: scored, running or queued."""
        have = {key: t.number for key, t in self.done_by_key.items()}
        have.update((j.key, j.trial.number) for j in [*self.in_flight.values(), *self.queue])
        return have

    def _ask(self) -> None:
        from hyla.space.search_space import constraint_values, suggest_layout

        if self.fresh is not None:
            asked = self.fresh.ask(self._have())
            self.summary.repeats = self.fresh.repeats
            if asked is None:
                self._exhausted()
                return
            trial, layout = asked
        else:
            trial = self.study.ask()
            layout = suggest_layout(trial, self.prep.space)
        key = layout.key()
        for k, v in (("layout", layout.to_dict()), ("layout_key", key), ("rung", self.rung)):
            trial.set_user_attr(k, v)
        for k in ("parent", "preset"):
            if k not in trial.user_attrs:
                trial.set_user_attr(k, None)
        for name, value in constraint_values(layout, self.prep.space).items():
            trial.set_constraint(name, float(value))
        job = _Job(trial, layout, key)
        if key in self.done_by_key:
            self._tell_reused(job, self.done_by_key[key])
        elif any(j.key == key for j in [*self.in_flight.values(), *self.queue]):
            self.dups[key].append(job)  # wait for the identical layout already running
        else:
            self.queue.append(job)

    def _exhausted(self) -> None:
        self.summary.exhausted, n = True, self.counted + self._pending()
        if self.console is not None:
            self.console.print(f"rung {self.rung}: no layout of the space is left to try; {n} of n_trials "
                               f"{self.prep.cfg.n_trials} trials")
        if self.progress is not None:
            self.progress.update(self.task, total=n)

    def _tell_reused(self, job: _Job, src: FrozenTrial) -> None:
        job.trial.set_user_attr("result", src.user_attrs.get("result"))
        for key in ("objective_sem", "n_seeds"):  # a reused result keeps its spread
            if key in src.user_attrs:
                job.trial.set_user_attr(key, src.user_attrs[key])
        job.trial.set_user_attr("reused_from", src.number)
        self.study.tell(job.trial, list(src.values))
        self.summary.reused += 1
        self._count(ok=True)

    def _count(self, ok: bool) -> None:
        self.counted += 1
        if ok:
            self.summary.completed += 1
        else:
            self.summary.failed += 1
        if self.progress is not None:
            s = self.summary
            self.progress.update(self.task, total=max(self._target(), self.counted), completed=self.counted,
                                 description=f"rung {self.rung}: {s.completed} ok, {s.failed} failed")

    def _fail(self, job: _Job, reason: str, status: str = "failed", result: dict | None = None) -> None:
        job.trial.set_user_attr("fail_reason", reason)
        job.trial.set_user_attr("status", status)
        if result is not None:
            job.trial.set_user_attr("result", result)
        self.study.tell(job.trial, state=TrialState.FAIL)
        self._count(ok=False)
        self.queue.extend(self.dups.pop(job.key, []))  # duplicates now train on their own

    def _next_job(self) -> list[_Job] | None:
        """The next trials to train together, up to ``batch`` of them (asking the sampler while fewer are queued),
        or None when there is none now."""
        while len(self.queue) < self.batch and self._more_to_ask():
            self._ask()
        if not self.queue:
            return None
        return [self.queue.popleft() for _ in range(min(self.batch, len(self.queue)))]

    def _submit(self, slot: int, jobs: list[_Job]) -> ray.ObjectRef:
        outs = []
        for job in jobs:
            job.slot = slot
            self.in_flight[job.trial.number] = job
            # absolute: a worker on another node must not resolve a relative run_dir against its own working dir
            outs.append(str((self.prep.run_path / "trials" / f"rung{self.rung}"
                             / f"trial{job.trial.number:05d}").absolute()))
        if self.batch == 1:
            return self.pool.submit(slot, jobs[0].layout.to_dict(), self.proxy, outs[0])
        return self.pool.submit_batch(slot, [j.layout.to_dict() for j in jobs], self.proxy, outs)

    def _ready(self, slot: int) -> None:
        note = self.pool.startup_note()
        if note and self.console is not None:
            self.console.print(note)

    def _finish(self, jobs: list[_Job], outcome: Outcome) -> None:
        """Every trial of a finished call: a batch's answer holds one result per trial."""
        many = outcome.kind == "result" and self.batch > 1
        for job, value in zip(reversed(jobs), reversed(outcome.value if many else [outcome.value] * len(jobs)),
                              strict=True):  # reversed: retried trials keep their order at the queue's front
            self._finish_one(job, dataclasses.replace(outcome, value=value))

    def _finish_one(self, job: _Job, outcome: Outcome) -> None:
        del self.in_flight[job.trial.number]
        if outcome.node is not None:
            job.trial.set_user_attr("worker_node", outcome.node)
        if outcome.kind == "died":  # the pool replaces the actor: its slot takes trials again once it is ready
            job.deaths.append({**(outcome.node or {}), "error": outcome.error})
            job.trial.set_user_attr("worker_deaths", job.deaths)
            job.attempts += 1
            if job.attempts <= self.prep.cfg.retries:
                self.summary.retried += 1
                self.queue.appendleft(job)  # next free worker: the replacement may find no room (node lost)
                return
            self._fail(job, f"worker died {job.attempts} time(s): {outcome.error}", status="worker_died")
            return
        if outcome.kind == "error":
            self._fail(job, outcome.error)
            return
        result = outcome.value
        status = result.get("status")
        if status == "config_error":
            self._fail(job, result["fail_reason"], status="failed", result=result)
            raise ConfigError(f"{self.prep.cfg.where}: rungs[{self.rung}].proxy: {result['fail_reason']}")
        if status != "ok":
            self._fail(job, result.get("fail_reason") or f"proxy status {status}", status=str(status), result=result)
            return
        try:
            values = objective_values(self.prep, job.layout, result)
        except ValueError as e:
            self._fail(job, str(e), result=result)
            return
        job.trial.set_user_attr("result", result)
        job.trial.set_user_attr("status", "ok")
        job.trial.set_user_attr("objective_sem", result_sems(self.prep, result))  # Optuna gets the means
        job.trial.set_user_attr("n_seeds", len(result.get("seeds") or [0]))
        frozen = self.study.tell(job.trial, values)
        self.done_by_key[job.key] = frozen
        self._count(ok=True)
        for dup in self.dups.pop(job.key, []):
            self._tell_reused(dup, frozen)

    def run(self) -> RungSummary:
        drive(self.pool, self._next_job, self._submit, self._finish, on_ready=self._ready)
        return self.summary


def run_search(cfg: StudyConfig, *, rungs: list[int] | None = None, console: Any = None,
               worker_env: dict[str, str] | None = None, show_progress: bool = True) -> SearchSummary:
    """Run (or resume) a search; validates everything before any worker starts.

    Args:
        cfg: the study config.
        rungs: only these rung indices (default: all, in order); `hyla search promote` passes one.
        console: a rich Console for progress and the final table (None = no output).
        worker_env: extra environment variables for the worker processes (e.g. fault injection in tests).
        show_progress: draw a progress bar on ``console``.

    Returns:
        Per-rung counts, the Pareto set of the highest rung reached, full-run spec paths.
    """
    prep = prepare(cfg)
    summary = SearchSummary()
    todo = list(range(len(cfg.rungs))) if rungs is None else rungs
    pool = start_pool(cfg.ray, console, env=worker_env)
    progress = None
    if console is not None and show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=False)
        progress.start()
    try:
        prev: optuna.Study | None = None
        first: optuna.Study | None = None
        for rung in range(max(todo) + 1):
            study = open_study(prep.storage, cfg.study_name(rung), cfg.directions, prep.study_attrs(rung),
                               sampler=prep.sampler(rung), where=cfg.where)
            if rung in todo:
                stale = _recover_stale(study)
                if stale and console is not None:
                    console.print(f"rung {rung}: {stale} trial(s) left running by a stopped driver re-enqueued")
                if rung == 0:
                    _enqueue_seeds(prep, study)
                else:
                    _enqueue_promoted(prep, rung, prev, study, first)
                summary.rungs.append(_RungDriver(prep, rung, study, pool, progress, console).run())
            prev, first = study, first or study
        summary.pareto_rung = max(todo)
        from hyla.search.rungs import pareto_front

        summary.pareto = pareto_front(prev.get_trials(deepcopy=False), cfg.directions)
        if rungs is None or max(todo) == len(cfg.rungs) - 1:
            from hyla.search.prepare import full_runs

            summary.full_run_specs = full_runs(prep, prev, console, first=first)
    finally:
        if progress is not None:
            progress.stop()
    return summary


def write_resolved(cfg: StudyConfig) -> Path:
    """Write the resolved study config as run_dir/study.yaml (what was actually run)."""
    path = cfg.run_path / "study.yaml"
    dump_yaml(cfg.to_dict(), path)
    return path
