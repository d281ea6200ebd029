"""Promotion between rungs: which trials of rung r are re-trained with the bigger proxy of rung r+1.

Optuna's pruners do not work for multi-objective studies, so fidelity levels are handled by hand: each rung is
its own Optuna study and the promotion set of a rung is chosen here from its finished trials.

- ``pareto``: NSGA-II style. Trials are sorted into non-dominated fronts; whole fronts are taken while they fit in
  ``k``, and the front that overflows is cut by crowding distance (boundary points first, then the most isolated),
  so the promoted set spreads along the trade-off instead of clustering.
- ``topk``: the best ``k`` by one objective.

Feasible trials (all constraint values <= 0) are preferred: infeasible ones are promoted only when there are not
enough feasible ones, ranked by total constraint violation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from optuna.trial import FrozenTrial, TrialState

from hyla.config import ConfigError


def _oriented(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """Values turned into 'smaller is better' so dominance is one comparison."""
    return tuple(v if d == "minimize" else -v for v, d in zip(values, directions))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    oa, ob = _oriented(a, directions), _oriented(b, directions)
    return all(x <= y for x, y in zip(oa, ob)) and any(x < y for x, y in zip(oa, ob))


def non_dominated_fronts(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Fast non-dominated sort (Deb et al. 2002): fronts of point indices, best front first."""
    n = len(points)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    counts = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if dominates(points[i], points[j], directions):
                dominated_by[i].append(j)
                counts[j] += 1
            elif dominates(points[j], points[i], directions):
                dominated_by[j].append(i)
                counts[i] += 1
    fronts: list[list[int]] = []
    current = [i for i in range(n) if counts[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in dominated_by[i]:
                counts[j] -= 1
                if counts[j] == 0:
                    nxt.append(j)
        current = sorted(nxt)
    return fronts


def crowding_distance(points: Sequence[Sequence[float]], front: Sequence[int]) -> dict[int, float]:
    """NSGA-II crowding distance of each index in ``front`` (infinite at the extremes of any objective)."""
    dist = {i: 0.0 for i in front}
    if len(front) <= 2:
        return {i: math.inf for i in front}
    for m in range(len(points[front[0]])):
        order = sorted(front, key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = math.inf
        if hi == lo:
            continue
        for a, b, c in zip(order, order[1:], order[2:]):
            dist[b] += (points[c][m] - points[a][m]) / (hi - lo)
    return dist


def pareto_select(points: Sequence[Sequence[float]], directions: Sequence[str], k: int) -> list[int]:
    """Up to ``k`` indices by front rank, ties in the last front broken by crowding distance (then index)."""
    chosen: list[int] = []
    for front in non_dominated_fronts(points, directions):
        if len(chosen) + len(front) <= k:
            chosen.extend(front)
            continue
        dist = crowding_distance(points, front)
        chosen.extend(sorted(front, key=lambda i: (-dist[i], i))[: k - len(chosen)])
        break
    return chosen


def pareto_front(trials: Sequence[FrozenTrial], directions: Sequence[str]) -> list[FrozenTrial]:
    """The first non-dominated front of the completed trials (feasible ones only if any are feasible)."""
    done = _unique_layouts(_ranked_pool(trials))
    if not done:
        return []
    fronts = non_dominated_fronts([t.values for t in done], directions)
    return [done[i] for i in fronts[0]]


def violation(trial: FrozenTrial) -> float:
    """Total constraint violation (0 for a feasible trial)."""
    return sum(max(0.0, v) for v in trial.constraints.values())


def _ranked_pool(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
    feasible = [t for t in done if violation(t) == 0.0]
    return feasible or done


def _unique_layouts(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """One trial per layout (a reused result is the same model): promoting both would train it twice."""
    seen: set[str] = set()
    out = []
    for t in sorted(trials, key=lambda t: ("reused_from" in t.user_attrs, t.number)):
        key = t.user_attrs.get("layout_key", f"#{t.number}")
        if key not in seen:
            seen.add(key)
            out.append(t)
    return sorted(out, key=lambda t: t.number)


def select_promoted(trials: Sequence[FrozenTrial], directions: Sequence[str], objectives: Sequence[str],
                    rule: str, k: int, objective: str | None = None) -> list[FrozenTrial]:
    """The promotion set of a rung.

    Args:
        trials: the rung's trials (only COMPLETE ones are considered).
        directions: per-objective "minimize"/"maximize", in value order.
        objectives: objective names, in value order (for ``topk``).
        rule: ``pareto`` or ``topk``.
        k: maximum number promoted.
        objective: the ``topk`` objective (default: the first).

    Returns:
        Promoted trials, best first; feasible trials first, infeasible ones only to fill up to ``k``.
    """
    if rule not in ("pareto", "topk"):
        raise ConfigError(f"promote.rule: {rule!r} is not allowed; expected pareto or topk")
    done = _unique_layouts([t for t in trials if t.state == TrialState.COMPLETE and t.values is not None])
    feasible = [t for t in done if violation(t) == 0.0]
    infeasible = sorted((t for t in done if violation(t) > 0.0), key=lambda t: (violation(t), t.number))
    if rule == "topk":
        m = objectives.index(objective) if objective else 0
        sign = 1.0 if directions[m] == "minimize" else -1.0
        picked = sorted(feasible, key=lambda t: (sign * t.values[m], t.number))[:k]
    else:
        idx = pareto_select([t.values for t in feasible], directions, k)
        picked = [feasible[i] for i in idx]
    return picked + infeasible[: k - len(picked)]
