"""Are two neighbours on a Pareto front really different, or only different by seed noise?

For the front of a rung sorted along a cost axis (memory_bytes by default), each neighbouring pair is compared
per quality metric (recall, lm_loss) in two ways:

- Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``, two-sided) on the per-seed values, when both
  trials have at least 2 seeds; "significant" means p < ``alpha`` (0.05). With one seed there is no spread to
  test against, so the verdict is "n/a (1 seed)".
- The interval verdict the promotion uses (`hyla.search.rungs`): the intervals ``mean ± z·sem`` are "separated"
  when they do not touch, else "overlapping". With 3 seeds and z = 2 each interval is about an 80 % t-interval.

The two can disagree near the threshold; both are shown because the promotion acts on the second one.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from hyla.analysis.pareto import front_records
from hyla.analysis.study_data import StudyData, TrialRecord
from hyla.config import ConfigError
from hyla.metrics import COST_AXES

#: Cost axes a front is walked along, in order of preference (the registry's exact costs).
X_AXES: tuple[str, ...] = COST_AXES


@dataclass(frozen=True)
class PairTest:
    """One metric compared between two neighbours ``a`` (smaller x) and ``b`` on a front.

    Attributes:
        rung: the rung of both trials.
        a: the neighbour with the smaller x value.
        b: the next point along x.
        metric: the compared metric (``recall``, ``lm_loss`` ...).
        diff: mean of ``b`` minus mean of ``a``.
        p: Welch's two-sided p-value, None when not testable.
        verdict: ``significant (p=...)``, ``not significant (p=...)``, ``n/a (1 seed)`` or ``n/a (no variance)``.
        intervals: ``separated at ±z s.e.m.``, ``overlapping at ±z s.e.m.`` or ``n/a (no s.e.m.)``.
    """

    rung: int
    a: TrialRecord
    b: TrialRecord
    metric: str
    diff: float
    p: float | None
    verdict: str
    intervals: str

    @property
    def significant(self) -> bool | None:
        """True/False by Welch's test, None when it could not be run."""
        return None if self.p is None else self.verdict.startswith("significant")


def welch_test(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> tuple[float | None, str]:
    """(p, verdict) of Welch's t-test on two samples of per-seed values; see the module docstring."""
    if len(a) < 2 or len(b) < 2:
        return None, "n/a (1 seed)"
    from scipy import stats

    with warnings.catch_warnings():  # identical seeds: scipy warns about precision and returns NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    if math.isnan(p):
        return None, "n/a (no variance)"
    return p, f"{'significant' if p < alpha else 'not significant'} (p={p:.2g})"


def interval_verdict(mean_a: float, sem_a: float | None, mean_b: float, sem_b: float | None, z: float = 2.0) -> str:
    """Whether ``mean ± z·sem`` of two trials are separated (do not touch) or overlap."""
    if sem_a is None or sem_b is None:
        return "n/a (no s.e.m.)"
    separated = abs(mean_b - mean_a) > z * (sem_a + sem_b)
    return f"{'separated' if separated else 'overlapping'} at ±{z:g} s.e.m."


def front_axis(data: StudyData, records: Sequence[TrialRecord]) -> str:
    """The x metric to walk a front along: the first of `X_AXES` every record has, else the first objective."""
    for x in X_AXES:
        if records and all(r.metric(x) is not None for r in records):
            return x
    if not data.objectives:
        raise ConfigError(f"study {data.name!r}: no objectives to order a front by")
    return data.objectives[0].name


def front_pair_tests(data: StudyData, rung: int, metrics: Sequence[str] = ("recall", "lm_loss"),
                     x: str | None = None, z: float = 2.0, alpha: float = 0.05) -> list[PairTest]:
    """Neighbour-by-neighbour tests along the Pareto front of one rung.

    Args:
        data: the study.
        rung: which rung.
        metrics: metrics to compare (ones no front trial records are skipped).
        x: the axis the front is sorted by (default: `front_axis`).
        z: interval half-width in sems for the interval verdict.
        alpha: significance level of Welch's test.

    Returns:
        One `PairTest` per neighbouring pair and metric, pairs in x order.
    """
    if rung not in data.rungs:
        raise ConfigError(f"--rung: {rung} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha: {alpha!r} is not allowed; expected a number in (0, 1)")
    objectives = [o.name for o in data.objectives]
    front = front_records(data.select(rung=rung, complete=True), objectives, [o.direction for o in data.objectives])
    x = x or front_axis(data, front)
    front = sorted((r for r in front if r.metric(x) is not None), key=lambda r: (r.metric(x), r.number))
    seen: set[str] = set()  # a reused result (same layout) is one point, not a pair with itself
    front = [r for r in front if not (r.layout_key and r.layout_key in seen) and not seen.add(r.layout_key)]
    out = []
    for a, b in itertools.pairwise(front):
        for m in metrics:
            va, vb = a.metric(m), b.metric(m)
            if va is None or vb is None:
                continue
            p, verdict = welch_test(a.seed_values(m), b.seed_values(m), alpha)
            out.append(PairTest(rung, a, b, m, vb - va, p, verdict, interval_verdict(va, a.sem(m), vb, b.sem(m), z)))
    return out
