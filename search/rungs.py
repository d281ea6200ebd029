"""Promotion between rungs: which trials of rung r are re-trained with the bigger proxy of rung r+1.

Optuna's pruners do not work for multi-objective studies, so fidelity levels are handled by hand: each rung is
its own Optuna study and the promotion set of a rung is chosen here from its finished trials.

- ``pareto``: trials are sorted into non-dominated fronts; whole fronts are taken while they fit in ``k``, and the
  front that overflows is cut **knee first, then spread** (below), so the promoted set holds the front's knee
  region and reaches out along the trade-off from there.
- ``topk``: the best ``k`` by one objective.

Knee first, then spread (the cut of an overflowing front). Each objective is normalised by its range over the
competing trials and the search's first rung (``context``: at a late rung two finalists are measured against the
spread the search saw, not only against each other). The first place goes to the knee: the trial nearest the
utopia point (the best value of every objective among the competing trials; `hyla.metrics.utopia_distances`, the
knee `hyla analysis export --pick knee` takes too). Each further place goes to the trial farthest from every
trial already taken (max-min distance), which reaches the extremes next. With noise on, both distances count a
difference only beyond ``z`` standard errors of the two trials (``|a - b| - z*(sem_a + sem_b)``, floored at 0),
so a proxy score that differs only by seed noise moves neither choice; ties go to the larger plain distance, then
the lower trial number. Why not NSGA-II's crowding distance: it ranks every extreme of every objective first
(infinite distance), so with a small ``k`` it promotes only the extremes, e.g. the pure Transformer and the pure
linear model, and cuts every hybrid between them, the layouts a search is for.

Exact dominance and the non-dominated sort (`dominates`, `sort_fronts`, `non_dominated_fronts`) are
`hyla.metrics`' (analysis.pareto uses the same); the noise-aware relation below is built on them.

Feasible trials (all constraint values <= 0) are preferred: infeasible ones are promoted only when there are not
enough feasible ones, ranked by total constraint violation.

Noise (``noise=True``, the default). A proxy score is a mean over a few seeds, so two layouts whose means differ
by less than the seed-to-seed spread are not really ordered. A trial may carry user attrs ``objective_sem`` (one
standard error of the mean per objective, in value order; None or absent = exact, e.g. memory_bytes, params,
kv_bytes) and ``n_seeds``. In "smaller is better" orientation every objective becomes an interval
``[v - z*sem, v + z*sem]``, and ``a`` dominates ``b`` *beyond noise* when ``hi_a <= lo_b`` in every objective and
``hi_a < lo_b`` in at least one. This relation is irreflexive and transitive (``hi_a <= lo_b <= hi_b <= lo_c``),
a strict partial order, so the usual fast non-dominated sort applies; with every sem 0 it is exactly ordinary
dominance. Its fronts ("noise fronts") are coarser than the exact ones: a layout beaten only within noise stays
in front 0 with the layout that beat it.

Promotion takes noise fronts whole while they fit in ``k``. Inside the front that overflows, trials are taken by
exact front rank of their means, then (``pareto``) knee first, then spread, within that exact rank; ``topk`` orders
by the mean and trial number. So the noise only
decides *which* trials compete for the last places; it never promotes a trial dominated beyond noise over one
that is not. Members of noise front 0 that do not fit are not dropped silently: `promotion_report` lists them as
candidates cut by ``k``.

Why z = 2: with 3 seeds the sem has 2 degrees of freedom, and mean ± 2 sem is about an 80 % two-sided t-interval
(81.6 %, t with df 2), not a 95 % one. Two such intervals that do not overlap imply, for equal spreads, a Welch
t-test p below about 0.05 (t > 2.83 at df ≈ 4). A 3-seed sem is itself rough (its relative error is about 50 %),
so this is a guard against promoting on noise, not a significance test; raise ``z`` to keep more candidates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from hyla.config import ConfigError
from hyla.metrics import (better, dominates, non_dominated_fronts, oriented, sort_fronts,  # noqa: F401 (re-export)
                          utopia_distances)

RULES: tuple[str, ...] = ("pareto", "topk")


def dominates_beyond_noise(a: Sequence[float], b: Sequence[float], sem_a: Sequence[float], sem_b: Sequence[float],
                           directions: Sequence[str], z: float = 2.0) -> bool:
    """True when ``a``'s interval ``v ± z*sem`` is no worse than ``b``'s in every objective, better in one.

    Oriented so that smaller is better: ``hi_a <= lo_b`` everywhere and ``hi_a < lo_b`` somewhere (`hyla.metrics`'
    `better` on the interval ends). With all sems 0 this is `dominates`.
    """
    hi_a = [v + z * s for v, s in zip(oriented(a, directions), sem_a)]
    lo_b = [v - z * s for v, s in zip(oriented(b, directions), sem_b)]
    return better(hi_a, lo_b)


def noise_fronts(points: Sequence[Sequence[float]], sems: Sequence[Sequence[float]], directions: Sequence[str],
                 z: float = 2.0) -> list[list[int]]:
    """Fronts under `dominates_beyond_noise` (``sems[i]``: per-objective sem of point i), best front first."""
    return sort_fronts(len(points), lambda i, j: dominates_beyond_noise(points[i], points[j], sems[i], sems[j],
                                                                        directions, z))


def knee_first(points: Sequence[Sequence[float]], sems: Sequence[Sequence[float]], group: Sequence[int],
               directions: Sequence[str], z: float = 0.0, scale: Sequence[Sequence[float]] = ()) -> list[int]:
    """The indices of ``group`` in promotion order: the knee, then each time the one farthest from those taken
    (see the module docstring). ``points``/``sems`` are indexed by the group's indices; ``scale``: more value
    vectors that widen each objective's range (the normalisation)."""
    left = sorted(group)
    if len(left) <= 1:
        return left
    pts = {i: oriented(points[i], directions) for i in left}
    spans = [max(col) - min(col) for col in zip(*pts.values(), *(oriented(v, directions) for v in scale))]

    def apart(i: int, j: int, noise: float) -> float:
        return math.hypot(*(max(0.0, abs(pts[i][m] - pts[j][m]) - noise * (sems[i][m] + sems[j][m])) / span
                            for m, span in enumerate(spans) if span > 0))

    dist = utopia_distances([points[i] for i in left], directions, [sems[i] for i in left], z, scale)
    plain = utopia_distances([points[i] for i in left], directions, scale=scale)
    knee = min(range(len(left)), key=lambda n: (dist[n], plain[n], left[n]))
    order = [left.pop(knee)]
    while left:
        far = max(left, key=lambda i: (min(apart(i, c, z) for c in order), min(apart(i, c, 0.0) for c in order), -i))
        left.remove(far)
        order.append(far)
    return order


def pareto_select(points: Sequence[Sequence[float]], directions: Sequence[str], k: int) -> list[int]:
    """Up to ``k`` indices by front rank, the last front cut knee first, then spread (exact means, no noise)."""
    return _select(points, [[0.0] * len(p) for p in points], directions, 0.0, k, spread=True)[0]


def _select(points: Sequence[Sequence[float]], sems: Sequence[Sequence[float]], directions: Sequence[str], z: float,
            k: int, spread: bool, scale: Sequence[Sequence[float]] = ()) -> tuple[list[int], dict[int, int],
                                                                                   dict[int, int]]:
    """(chosen indices best first, noise front of each index, exact front of each index); see the module doc."""
    exact = {i: r for r, f in enumerate(non_dominated_fronts(points, directions)) for i in f}
    noisy = {i: r for r, f in enumerate(noise_fronts(points, sems, directions, z)) for i in f}
    chosen: list[int] = []
    for r in range(max(noisy.values(), default=-1) + 1):
        front = sorted((i for i in noisy if noisy[i] == r), key=lambda i: (exact[i], i))
        if len(chosen) + len(front) <= k:
            chosen.extend(front)
            continue
        for rank in sorted({exact[i] for i in front}):  # the overflowing front: exact rank groups in order
            group = [i for i in front if exact[i] == rank]
            if len(chosen) + len(group) > k and spread:
                group = knee_first(points, sems, group, directions, z, scale)
            chosen.extend(group[: k - len(chosen)])
            if len(chosen) >= k:
                break
        break
    return chosen, noisy, exact


def violation(trial: FrozenTrial) -> float:
    """Total constraint violation (0 for a feasible trial)."""
    return sum(max(0.0, v) for v in trial.constraints.values())


def objective_sems(trial: FrozenTrial) -> list[float]:
    """Per-objective sem of a trial from user attr ``objective_sem``; absent or None entries are 0 (exact)."""
    n = len(trial.values or ())
    raw = trial.user_attrs.get("objective_sem")
    if raw is None:
        return [0.0] * n
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        raise ConfigError(f"trial {trial.number} user attr objective_sem: {raw!r}; expected a list of {n} "
                          "numbers >= 0 or None (one per objective)")
    out = []
    for s in raw:
        if s is not None and (isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0):
            raise ConfigError(f"trial {trial.number} user attr objective_sem: {s!r} in {raw!r}; expected a finite "
                              "number >= 0 or None")
        out.append(0.0 if s is None else float(s))
    return out


def n_seeds(trial: FrozenTrial) -> int:
    """Seeds behind a trial's values (user attr ``n_seeds``, else the result's ``seeds`` list, else 1)."""
    n = trial.user_attrs.get("n_seeds")
    if n is None:
        seeds = (trial.user_attrs.get("result") or {}).get("seeds")
        n = len(seeds) if isinstance(seeds, list) and seeds else 1
    return int(n)


def _ranked_pool(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    feasible = [t for t in done if violation(t) == 0.0]
    return feasible or done


def _dedup(trials: Sequence[FrozenTrial]) -> tuple[list[FrozenTrial], dict[int, int]]:
    """(one trial per layout by number, {dropped trial number: kept trial number}); a non-reused trial is kept."""
    kept: dict[str, FrozenTrial] = {}
    dup_of: dict[int, int] = {}
    for t in sorted(trials, key=lambda t: ("reused_from" in t.user_attrs, t.number)):
        key = t.user_attrs.get("layout_key", f"#{t.number}")
        if key in kept:
            dup_of[t.number] = kept[key].number
        else:
            kept[key] = t
    return sorted(kept.values(), key=lambda t: t.number), dup_of


def _unique_layouts(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """One trial per layout (a reused result is the same model): promoting both would train it twice."""
    return _dedup(trials)[0]


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The first exact non-dominated front of the completed trials (feasible ones only if any are feasible)."""
    done = _unique_layouts(_ranked_pool(trials))
    if not done:
        return []
    fronts = non_dominated_fronts([t.values for t in done], directions)
    return [done[i] for i in fronts[0]]


def noise_front(trials: Sequence[FrozenTrial], directions: Sequence[str], z: float = 2.0) -> list[FrozenTrial]:
    """Like `pareto_front`, but the trials no other trial dominates beyond noise (``v ± z*sem``)."""
    _check_z(z)
    done = _unique_layouts(_ranked_pool(trials))
    if not done:
        return []
    fronts = noise_fronts([t.values for t in done], [objective_sems(t) for t in done], directions, z)
    return [done[i] for i in fronts[0]]


def _check_z(z: float) -> None:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
        raise ConfigError(f"promote.noise_z: {z!r} is not allowed; expected a finite number >= 0")


@dataclass(frozen=True)
class PromotionEntry:
    """Why one complete trial of a rung was or was not promoted.

    Attributes:
        trial: the trial.
        promoted: in the promotion set.
        noise_front: index of its noise front among the ranked trials (0 = within noise of the best); None for
            a duplicate layout or an infeasible trial while feasible ones exist (those are not ranked by fronts).
        exact_front: index of its exact front by the means (None like ``noise_front``).
        note: one line for people: ``promoted``, ``candidate (within noise of the front), cut by k`` ...
    """

    trial: FrozenTrial
    promoted: bool
    noise_front: int | None
    exact_front: int | None
    note: str

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def candidate(self) -> bool:
        """Within noise of the front (noise front 0) but not promoted: cut by ``k`` only."""
        return not self.promoted and self.noise_front == 0


@dataclass(frozen=True)
class PromotionReport:
    """The promotion set of a rung plus one `PromotionEntry` per complete trial (by trial number)."""

    promoted: tuple[FrozenTrial, ...]
    entries: tuple[PromotionEntry, ...]
    rule: str
    k: int
    z: float  # the z used (0.0 when noise is off)

    def candidates(self) -> list[PromotionEntry]:
        """Non-promoted members of noise front 0 (within noise of the front, cut by ``k``)."""
        return [e for e in self.entries if e.candidate]


def promotion_report(trials: Sequence[FrozenTrial], directions: Sequence[str], objectives: Sequence[str],
                     rule: str, k: int, objective: str | None = None, *, noise: bool = True,
                     z: float = 2.0, context: Sequence[FrozenTrial] = ()) -> PromotionReport:
    """The promotion set of a rung and the reason for every complete trial; arguments as `select_promoted`."""
    if rule not in RULES:
        raise ConfigError(f"promote.rule: {rule!r} is not allowed; expected pareto or topk")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ConfigError(f"promote.k: {k!r} is not allowed; expected an integer >= 0")
    if objective is not None and objective not in objectives:
        raise ConfigError(f"promote.objective: {objective!r} is not an objective; expected one of "
                          f"{', '.join(objectives)}")
    _check_z(z)
    z = float(z) if noise else 0.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    done, dup_of = _dedup(complete)
    feasible = [t for t in done if violation(t) == 0.0]
    infeasible = sorted((t for t in done if violation(t) > 0.0), key=lambda t: (violation(t), t.number))
    points = [list(t.values) for t in feasible]
    sems = [objective_sems(t) for t in feasible]
    if rule == "topk":
        m = list(objectives).index(objective) if objective else 0
        points, sems, dirs = [[p[m]] for p in points], [[s[m]] for s in sems], [directions[m]]
    else:
        dirs = list(directions)
    scale = [list(t.values) for t in context if t.state == TrialState.COMPLETE and t.values is not None]
    idx, noisy, exact = _select(points, sems, dirs, z, k, spread=rule == "pareto", scale=scale)
    picked = [feasible[i] for i in idx] + infeasible[: max(0, k - len(idx))]
    promoted = {t.number for t in picked}
    pos = {t.number: i for i, t in enumerate(feasible)}
    entries = []
    for t in sorted(complete, key=lambda t: t.number):
        if t.number in dup_of:
            entries.append(PromotionEntry(t, False, None, None, f"same layout as trial {dup_of[t.number]}"))
        elif t.number in pos:
            i = pos[t.number]
            entries.append(PromotionEntry(t, t.number in promoted, noisy[i], exact[i],
                                          _note(t.number in promoted, noisy[i], z > 0)))
        else:
            note = f"infeasible (violation {violation(t):.3g})"
            entries.append(PromotionEntry(t, t.number in promoted, None, None,
                                          note + (", promoted to fill k" if t.number in promoted else "")))
    return PromotionReport(tuple(picked), tuple(entries), rule, k, z)


def _note(promoted: bool, front: int, noisy: bool) -> str:
    if promoted:
        return "promoted"
    if front == 0:
        return "candidate (within noise of the front), cut by k" if noisy else "on the front, cut by k"
    return f"dominated beyond noise (noise front {front})" if noisy else f"dominated (front {front})"


def select_promoted(trials: Sequence[FrozenTrial], directions: Sequence[str], objectives: Sequence[str],
                    rule: str, k: int, objective: str | None = None, *, noise: bool = True,
                    z: float = 2.0, context: Sequence[FrozenTrial] = ()) -> list[FrozenTrial]:
    """The promotion set of a rung (noise-aware by default; see the module docstring).

    Args:
        trials: the rung's trials (only COMPLETE ones are considered).
        directions: per-objective "minimize"/"maximize", in value order.
        objectives: objective names, in value order (for ``topk``).
        rule: ``pareto`` or ``topk``.
        k: maximum number promoted.
        objective: the ``topk`` objective (default: the first).
        noise: compare intervals ``v ± z*sem`` (trial user attr ``objective_sem``) instead of the bare means.
        z: interval half-width in sems (config ``promote.noise_z``).
        context: more trials (the search's first rung) whose values only widen each objective's range for the
            knee-first cut: a later rung holds a few finalists, and their differences are measured against the
            spread the whole search saw, not only against each other.

    Returns:
        Promoted trials, best first; feasible trials first, infeasible ones only to fill up to ``k``.
    """
    return list(promotion_report(trials, directions, objectives, rule, k, objective, noise=noise, z=z,
                                 context=context).promoted)
