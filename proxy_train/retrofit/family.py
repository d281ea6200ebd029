"""Recall proxy families for the calibration (issue 31): one interface for the from-scratch probe, the
capacity-composed score and the retrofit proxy, so one driver (``benchmarks/bench_fidelity_v2.py``) runs them all.

A family runner is a function ``run(jobs, ctx, on_result) -> None``: it scores every `FamilyJob` (a layout, a
seed and a budget multiplier) and calls ``on_result(job, FamilyResult)`` as each finishes (the driver appends a
record at once, so a long run can be stopped and resumed). ``ctx.stop()`` becomes True past the driver's time
cap: a runner checks it between jobs and returns early; jobs without a result run next time. Runners are looked
up lazily by name (`family_runner`), so a family whose module is missing fails only when asked for:

- ``probe``: `run_probe_family` below: the product's from-scratch recall probe
  (``hyla.proxy_train.probe.runner.run_probes``; the recipe is ``ctx.options["probe"]`` over `PROBE_DEFAULTS`
  of the scale, its steps x the job's budget). It scores on its own MQAR levels, not on the level set.
- ``capacity``: ``hyla.proxy_train.retrofit.capacity.run_capacity_family`` (the capacity-composed score).
- ``supernet``: ``hyla.proxy_train.supernet.family.run_supernet_family``: scores by inheritance from one supernet
  per seed over the calibration's own space (issue 32), the teacher and stage 1 being the retrofit's.
- ``retrofit``: ``hyla.proxy_train.retrofit.proxy.run_retrofit_family``, the hook the retrofit proxy implements
  with this signature: score each job's layout on ``ctx.level_set`` after its retrofit with ``job.seed`` (the
  data order) at ``job.budget`` x its rung-0 steps; put the teacher's training time in ``FamilyResult.shared``
  under a key naming the teacher (e.g. ``teacher:<content key>``) so the Fast check counts it once.

Public API (stable): ``FamilyJob``, ``FamilyContext``, ``FamilyResult``, ``FAMILIES``, ``PROBE_DEFAULTS``,
``family_runner(name)``, ``suite_score(levels)``, ``run_probe_family(jobs, ctx, on_result)``.
"""

from __future__ import annotations

import importlib
import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hyla.config import ConfigError
from hyla.space.layout import Layout

#: family name -> "module:function" of its runner
FAMILIES: dict[str, str] = {
    "probe": "hyla.proxy_train.retrofit.family:run_probe_family",
    "capacity": "hyla.proxy_train.retrofit.capacity:run_capacity_family",
    "retrofit": "hyla.proxy_train.retrofit.proxy:run_retrofit_family",
    "supernet": "hyla.proxy_train.supernet.family:run_supernet_family",
}
#: the from-scratch probe's recipe per scale (``RecallProbeConfig`` fields); ``small`` is the product's preset
PROBE_DEFAULTS: dict[str, dict[str, Any]] = {
    "tiny": {"seq_len": 32, "pairs": [2, 4, 8], "steps": 40, "batch_size": 16, "lrs": [1e-3], "warmup": 10,
             "eval_every": 25, "eval_examples": 128, "zero_init": "all", "pool_rows": 4096},
    "small": {"seq_len": 128, "pairs": [2, 4, 8, 16], "steps": 1500, "batch_size": 32, "lrs": [1e-3],
              "eval_every": 100, "width": 64, "scan_chunk": 16, "concurrent": 16, "zero_init": "all"},
}


@dataclass(frozen=True)
class FamilyJob:
    """One score to compute: ``layout`` (at the calibration's scale), ``seed``, ``budget`` (x rung-0 steps)."""

    layout: Layout
    seed: int
    budget: int = 1


@dataclass
class FamilyResult:
    """A family's score of one job.

    Attributes:
        recall: the family's score (mean within each task of its levels, then over tasks: `suite_score`).
        levels: level key -> score.
        floor: the score of a model that only guesses one of the context's values, on the same aggregation
            (the chance/plateau level the Graded check compares with).
        wall_s: seconds spent on this job alone.
        budget_steps: optimizer steps of this job's training (the budget actually run).
        shared: costs shared by many jobs (teacher, capacity curves): key -> seconds, counted once per key.
        extra: anything else worth keeping in the record (best lr, curves, ...).
    """

    recall: float
    levels: dict[str, float]
    floor: float
    wall_s: float
    budget_steps: int
    shared: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FamilyContext:
    """What every runner gets besides its jobs.

    Attributes:
        scale: the layouts' scale name (``tiny``, ``small`` ...).
        level_set: the graded level set the families score on (``retrofit-tiny`` ...; not used by ``probe``).
        device: ``cpu`` or ``cuda``.
        options: per-family overrides, e.g. ``{"probe": {"steps": 200}, "capacity": {"steps": 500}}``.
        cache_root: the shared cache directory (None: ``$HYLA_CACHE_DIR`` or ``~/.cache/hyla``).
        log: progress lines.
        stop: True once no new job should start (the driver's time cap).
    """

    scale: str
    level_set: str
    device: str = "cpu"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    cache_root: str | None = None
    log: Callable[[str], None] = print
    stop: Callable[[], bool] = lambda: False


Runner = Callable[[list[FamilyJob], FamilyContext, Callable[[FamilyJob, FamilyResult], None]], None]


def family_runner(name: str) -> Runner:
    """The runner of family ``name`` (imported now); ConfigError for an unknown or unavailable family."""
    if name not in FAMILIES:
        raise ConfigError(f"proxy family: {name!r} is not allowed; expected one of {', '.join(FAMILIES)}")
    module, _, func = FAMILIES[name].partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"proxy family {name}: {FAMILIES[name]} is not available ({type(e).__name__}: {e}); "
                          f"it implements Runner (hyla.proxy_train.retrofit.family)") from None


def suite_score(levels: Mapping[str, float]) -> float:
    """Mean over the levels of each task (the part of a level key before ``@``, hop counts pooled as ``hop``),
    then over tasks: `RecallSuite.evaluate`'s ``recall``."""
    per_task: dict[str, list[float]] = defaultdict(list)
    for level, value in levels.items():
        task = level.split("@", 1)[0].rstrip("0123456789")
        per_task[task].append(value)
    if not per_task:
        raise ValueError("suite_score: no levels")
    return statistics.fmean(statistics.fmean(v) for v in per_task.values())


def run_probe_family(jobs: list[FamilyJob], ctx: FamilyContext,
                     on_result: Callable[[FamilyJob, FamilyResult], None]) -> None:
    """The from-scratch recall probe of every job (module docstring), one ``run_probes`` call per budget."""
    import torch
    from hyla.proxy_train.probe.runner import ProbeJob, best_of_lrs, run_probes
    from hyla.proxy_train.probe.config import RecallProbeConfig
    from hyla.proxy_train.probe.levels import probe_levels

    base = {**PROBE_DEFAULTS.get(ctx.scale, PROBE_DEFAULTS["small"]), **ctx.options.get("probe", {})}
    for budget in sorted({j.budget for j in jobs}):
        group = [j for j in jobs if j.budget == budget]
        cfg = RecallProbeConfig(**{**base, "pairs": tuple(base["pairs"]), "lrs": tuple(base["lrs"]),
                                   "steps": int(base["steps"]) * budget})
        floor = suite_score({f"mqar@{cfg.seq_len}x{p}": 1.0 / p for p in cfg.pairs})
        pending: dict[int, list[dict[str, Any]]] = defaultdict(list)

        def done(pj: Any, res: dict[str, Any], group: list[FamilyJob] = group, cfg: RecallProbeConfig = cfg,
                 floor: float = floor, pending: dict[int, list[dict[str, Any]]] = pending) -> None:
            pending[pj.key].append(res)
            if len(pending[pj.key]) < len(cfg.lrs):
                return
            job = group[pj.key]
            best = best_of_lrs(pending[pj.key], probe_levels(cfg, job.layout.vocab_size), 0.0)
            # a stack trains every seed and lr of one layout together: this job's share of its time
            runs = pending[pj.key]
            wall = max(r.get("wall_s") or 0.0 for r in runs) * len(runs) / max(r.get("stacked", 1) for r in runs)
            on_result(job, FamilyResult(recall=best["recall"], levels=best["levels"], floor=floor, wall_s=wall,
                                        budget_steps=max(p["steps"] for p in best["per_lr"]),
                                        extra={"best_lr": best["lr"], "recall_auc": best["auc"],
                                               "probe": dict(base)}))

        pjobs = [ProbeJob(j.layout, j.seed, lr, i) for i, j in enumerate(group) for lr in cfg.lrs]
        run_probes(pjobs, cfg, torch.device(ctx.device), None, on_result=done, stop=ctx.stop, log=ctx.log)
        if ctx.stop():
            return
