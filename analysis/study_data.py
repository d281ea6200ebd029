"""Load a hyla search study into a tidy list of `TrialRecord`s.

A study is found from any of: an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``), a journal file
(``study.journal``), a run directory holding ``study.journal``, or the study YAML that ran it (`hyla.search.locate`,
the resolver `hyla search status` uses too; nothing is created). Rungs may be stored
as separate studies named ``<name>/rung<r>`` or as a ``rung`` trial user attr; both are read and merged, so the
rest of the analysis only sees ``TrialRecord.rung``.

Noise: a trial may carry user attrs ``objective_sem`` (standard error of the mean per objective, in objective
order) and ``n_seeds``, and its ProxyResult dict ``seed_values`` (metric -> one value per seed), ``sem`` and
``seeds``. `TrialRecord.sem`, `TrialRecord.seed_values` and `TrialRecord.n_seeds` expose them; studies written
before seeds existed load with ``sem(...) is None`` and ``n_seeds == 1``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyla.config import ConfigError, did_you_mean
from hyla.metrics import METRICS, is_exact, result_field
from hyla.space.layout import Layout


@dataclass(frozen=True)
class Objective:
    """One study objective: its name (``lm_loss``, ``recall`` ...) and ``minimize``/``maximize``."""

    name: str
    direction: str

    @property
    def sign(self) -> float:
        """+1 when smaller is better, -1 when larger is better (multiply to get a minimisation value)."""
        return 1.0 if self.direction == "minimize" else -1.0


@dataclass(frozen=True)
class TrialRecord:
    """One trial of one rung, flattened from Optuna's FrozenTrial and the hyla user attrs."""

    study: str
    number: int
    rung: int
    state: str  # Optuna TrialState name: COMPLETE, FAIL, RUNNING, WAITING, PRUNED
    values: dict[str, float]
    layout: Layout | None
    layout_string: str
    layout_key: str
    preset: str | None
    parent: int | None
    feasible: bool
    constraints: dict[str, float]
    result: dict[str, Any]
    fail_reason: str | None
    user_attrs: dict[str, Any] = field(default_factory=dict, repr=False)
    objective_sem: dict[str, float | None] = field(default_factory=dict)  # by objective name; None = unknown
    n_seeds: int = 1  # seeds averaged into the values

    @property
    def complete(self) -> bool:
        return self.state == "COMPLETE"

    def sem(self, name: str) -> float | None:
        """Standard error of the mean of a metric over seeds.

        0.0 for exact metrics (memory, KV bytes, params); else the trial's ``objective_sem``, the result's
        ``sem``, or one computed from ``seed_values`` (>= 2 seeds); None when unknown (one seed, old studies).
        """
        if is_exact(name):
            return 0.0
        if self.objective_sem.get(name) is not None:
            return self.objective_sem[name]
        key = result_field(name)
        sems = self.result.get("sem")
        if isinstance(sems, dict):
            v = _number(sems.get(key, sems.get(name)))
            if v is not None:
                return v
        vals = self.seed_values(name)
        if len(vals) >= 2:
            return statistics.stdev(vals) / math.sqrt(len(vals))
        return None

    def seed_values(self, name: str) -> list[float]:
        """One value per seed (the result's ``seed_values``); a single-seed trial gives ``[metric]`` or ``[]``."""
        per_seed = self.result.get("seed_values")
        if isinstance(per_seed, dict):
            key = result_field(name)
            raw = per_seed.get(key, per_seed.get(name))
            if isinstance(raw, list) and raw:
                vals = [_number(v) for v in raw]
                if all(v is not None for v in vals):
                    return vals  # type: ignore[return-value]
        v = self.metric(name)
        return [] if v is None else [v]

    def metric(self, name: str) -> float | None:
        """An objective value by name; falls back to the recorded ProxyResult for non-objective metrics."""
        if name in self.values:
            return self.values[name]
        key = result_field(name)
        return _number(self.result.get(key, self.result.get(name)))


def _number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, a string ...)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class StudyData:
    """A whole study (all rungs): its config, objectives and trials."""

    name: str
    source: str
    config: dict[str, Any]
    objectives: tuple[Objective, ...]
    trials: tuple[TrialRecord, ...]
    run_dir: Path | None = None  # the study's run directory (where outputs go by default); None = unknown

    def output_path(self, filename: str) -> Path:
        """``run_dir/filename``, or ``filename`` in the current directory when the run directory is unknown."""
        return self.run_dir / filename if self.run_dir is not None else Path(filename)

    @property
    def rungs(self) -> list[int]:
        return sorted({t.rung for t in self.trials})

    def direction(self, metric: str) -> str:
        """Direction of a metric: the study's objective direction, else the registry's (`hyla.metrics`)."""
        for o in self.objectives:
            if o.name == metric:
                return o.direction
        self.check_metric(metric, "objective")
        return METRICS[metric].direction

    def metric_names(self) -> list[str]:
        names = [o.name for o in self.objectives]
        return names + [m for m in METRICS if m not in names]

    def check_metric(self, name: str, where: str) -> None:
        """Refuse a name that is neither an objective of the study nor a registered metric (with a did-you-mean);
        the message starts with ``where`` (``pareto axis:``)."""
        allowed = self.metric_names()
        if name not in allowed:
            raise ConfigError(f"{where} {name!r} is not a metric of study {self.name!r}{did_you_mean(name, allowed)}; "
                              f"allowed: {', '.join(allowed)}")

    def select(self, rung: int | None = None, complete: bool | None = None) -> list[TrialRecord]:
        """Trials of one rung (None = all) and optionally only complete (True) or only not complete (False)."""
        out = [t for t in self.trials if rung is None or t.rung == rung]
        if complete is not None:
            out = [t for t in out if t.complete == complete]
        return out

    def top_rung(self) -> int:
        """The highest rung with complete trials (its proxies are the longest, so its numbers are preferred)."""
        done = [t.rung for t in self.trials if t.complete]
        if not done:
            raise ConfigError(f"study {self.name!r}: no complete trials to analyse ({len(self.trials)} trials in all)")
        return max(done)


def _config_run_dir(config: dict[str, Any], name: str) -> Path | None:
    """The run directory a study's stored config names, when it exists here (a study read from a database)."""
    for candidate in (config.get("run_dir"), Path("hyla_runs") / name):
        if isinstance(candidate, (str, Path)) and str(candidate) and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_study(source: str | Path, study_name: str | None = None) -> StudyData:
    """Load every rung of a study.

    Args:
        source: storage URL, journal file, run directory or study YAML.
        study_name: which study, when the storage holds several (rung studies ``<name>/rung<r>`` belong to
            ``<name>``).

    Returns:
        The study with one `TrialRecord` per trial of every rung.
    """
    import optuna

    from hyla.search.locate import locate_study

    where = locate_study(source, study_name)
    name = where.name
    members = [(n, where.rung_of(n)) for n in where.member_names()]
    config: dict[str, Any] = {}
    objectives: tuple[Objective, ...] = ()
    trials: list[TrialRecord] = []
    for study_name_r, rung in sorted(members, key=lambda x: -1 if x[1] is None else x[1]):
        study = optuna.load_study(study_name=study_name_r, storage=where.storage)
        attrs = study.user_attrs
        if not objectives:
            objectives = _objectives(attrs, study, study_name_r)
            config = dict(attrs.get("config") or {})
        trials.extend(_record(study_name_r, t, rung, objectives) for t in study.get_trials(deepcopy=False))
    trials.sort(key=lambda t: (t.rung, t.number))
    return StudyData(name=name, source=str(source), config=config, objectives=objectives, trials=tuple(trials),
                     run_dir=where.run_dir or _config_run_dir(config, name))


def _objectives(attrs: dict[str, Any], study: Any, where: str) -> tuple[Objective, ...]:
    raw = attrs.get("objectives")
    if raw:
        objs = tuple(Objective(str(o["name"]), str(o["direction"]).lower()) for o in raw)
    else:  # a study not written by hyla: name values by position
        objs = tuple(Objective(f"value{i}", d.name.lower()) for i, d in enumerate(study.directions))
    if len(objs) != len(study.directions):
        raise ConfigError(f"study {where}: user attr objectives lists {len(objs)} objectives but the study has "
                          f"{len(study.directions)} directions")
    return objs


def _record(study: str, t: Any, rung: int | None, objectives: tuple[Objective, ...]) -> TrialRecord:
    ua = dict(t.user_attrs)
    layout = None
    if isinstance(ua.get("layout"), dict):
        try:
            layout = Layout.from_dict(ua["layout"], where=f"{study} trial {t.number} layout")
        except ConfigError:
            layout = None  # a layout from an older space definition: keep the trial, without a diagram
    values = {}
    if t.values is not None:
        values = {o.name: float(v) for o, v in zip(objectives, t.values)}
    constraints = dict(t.constraints)
    result = ua.get("result") if isinstance(ua.get("result"), dict) else {}
    parent = ua.get("parent")
    raw_sem = ua.get("objective_sem")
    sems: dict[str, float | None] = {}
    if isinstance(raw_sem, list) and len(raw_sem) == len(objectives):  # anything else: sem unknown
        sems = {o.name: _number(s) for o, s in zip(objectives, raw_sem)}
    seeds = result.get("seeds")
    n_seeds = ua.get("n_seeds")
    if not isinstance(n_seeds, int) or isinstance(n_seeds, bool) or n_seeds < 1:
        n_seeds = len(seeds) if isinstance(seeds, list) and seeds else 1
    return TrialRecord(
        study=study, number=t.number, rung=int(ua.get("rung", rung if rung is not None else 0)),
        state=t.state.name, values=values, layout=layout,
        layout_string=layout.layer_string() if layout else "?",
        layout_key=str(ua.get("layout_key") or (layout.key() if layout else "")),
        preset=ua.get("preset") or None, parent=int(parent) if parent is not None else None,
        feasible=all(v <= 0.0 for v in constraints.values()), constraints=constraints, result=result,
        fail_reason=ua.get("fail_reason") or (result.get("fail_reason") if t.state.name == "FAIL" else None),
        user_attrs=ua, objective_sem=sems, n_seeds=n_seeds)
