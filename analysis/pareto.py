"""Pareto fronts over any objective subset, the knee point, and named picks.

All math works on "minimisation values": each objective is multiplied by +1 (minimize) or -1 (maximize), so a
point dominates another when it is <= in every coordinate and < in at least one.

Knee: each objective of the front is normalised to [0, 1] over the front (0 = best value on the front); the
knee is the front point closest (Euclidean) to the utopia point (0, ..., 0) (`hyla.metrics.utopia_distances`, the
rule the search's promotion starts from too). This works for any number of objectives. With the trials' standard
errors (`pick` passes them) a gap to the best value counts only beyond ±2 s.e.m., so a proxy score whose
differences are seed noise (a 40-step LM loss) does not decide the knee. For two objectives ``method="line"``
instead takes the point farthest from the straight line between the two extremes (the classic "elbow"); both are
invariant to the units of the objectives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hyla.config import ConfigError
from hyla.metrics import (DIRECTIONS, check_directions, dominates, non_dominated_fronts,  # noqa: F401 (re-export)
                          utopia_distances)
from hyla.analysis.study_data import StudyData, TrialRecord

#: Half-width, in standard errors, within which the knee treats two means as tied (the promotion's default z).
NOISE_Z = 2.0
#: Named picks for `pick()` / `hyla analysis export --pick`.
PICKS: tuple[str, ...] = ("knee", "best-recall", "min-kv", "best-loss")
#: Single-metric picks: (metric ranked, tie-break metric).
_BY_METRIC: dict[str, tuple[str, str]] = {"best-recall": ("recall", "memory_bytes"), "min-kv": ("kv_bytes", "recall"),
                                          "best-loss": ("lm_loss", "memory_bytes")}


def _signs(directions: Sequence[str]) -> list[float]:
    check_directions(directions)
    return [1.0 if d == "minimize" else -1.0 for d in directions]


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points (duplicates of a front point are all kept), in input order: the first
    front of `hyla.metrics.non_dominated_fronts` (the same dominance the search's rungs use)."""
    if any(len(p) != len(directions) for p in points):
        raise ConfigError(f"pareto: every point needs {len(directions)} values (one per direction)")
    fronts = non_dominated_fronts(points, directions)
    return fronts[0] if fronts else []


def knee_index(points: Sequence[Sequence[float]], directions: Sequence[str], method: str = "utopia",
               sems: Sequence[Sequence[float]] | None = None, z: float = NOISE_Z,
               scale: Sequence[Sequence[float]] = ()) -> int:
    """Index (into ``points``) of the knee of the non-dominated subset; see the module docstring.

    ``utopia`` only: ``sems``, one standard error per objective and point (gaps within ``z`` of them are ties);
    ``scale``, more value vectors that widen each objective's range (`pick` passes the first rung's trials).
    """
    if not points:
        raise ConfigError("knee: no points")
    front = non_dominated(points, directions)
    if len(front) == 1:
        return front[0]
    if method == "utopia":
        dist = utopia_distances([points[i] for i in front], directions,
                                None if sems is None else [sems[i] for i in front], z, scale)
        return front[min(range(len(front)), key=lambda i: (dist[i], points[front[i]][0]))]
    signs = _signs(directions)
    mins = [[s * points[i][k] for k, s in enumerate(signs)] for i in front]
    lo = [min(c) for c in zip(*mins)]
    hi = [max(c) for c in zip(*mins)]
    norm = [[(v - l) / (h - l) if h > l else 0.0 for v, l, h in zip(p, lo, hi)] for p in mins]
    if method == "line":
        if len(directions) != 2:
            raise ConfigError(f"knee method: 'line' needs exactly 2 objectives, got {len(directions)}; use 'utopia'")
        # extremes: best in objective 0 (x=0, y=1 after normalisation) and best in objective 1 (x=1, y=0);
        # the line between them is x + y = 1; farther below it (toward utopia) = stronger knee
        score = [(1.0 - p[0] - p[1]) / math.sqrt(2.0) for p in norm]
        return front[max(range(len(front)), key=lambda i: score[i])]
    raise ConfigError(f"knee method: {method!r} is not allowed; expected one of utopia, line")


def front_records(records: Sequence[TrialRecord], metrics: Sequence[str], directions: Sequence[str],
                  feasible_only: bool = True) -> list[TrialRecord]:
    """The non-dominated complete trials over ``metrics`` (trials lacking a metric are left out)."""
    usable = _usable(records, metrics, feasible_only)
    pts = [[r.metric(m) for m in metrics] for r in usable]
    return [usable[i] for i in non_dominated(pts, directions)]  # type: ignore[arg-type]


def _usable(records: Sequence[TrialRecord], metrics: Sequence[str], feasible_only: bool) -> list[TrialRecord]:
    return [r for r in records if r.complete and (r.feasible or not feasible_only)
            and all(r.metric(m) is not None for m in metrics)]


def pick(data: StudyData, how: str, rung: int | None = None, metrics: Sequence[str] | None = None) -> TrialRecord:
    """Choose one trial by a named trade-off among the complete, feasible trials of one rung.

    Args:
        data: the study.
        how: ``knee`` (knee of the front over ``metrics``, default the study objectives), ``best-recall``
            (highest recall, ties -> lower memory), ``min-kv`` (least KV cache bytes, ties -> higher recall),
            ``best-loss`` (lowest LM validation loss, ties -> lower memory).
        rung: which rung (default: the highest rung with complete trials, i.e. the longest proxies).
        metrics: objectives for ``knee``.
    """
    if how not in PICKS:
        raise ConfigError(f"--pick: {how!r} is not allowed; expected one of {', '.join(PICKS)}")
    rung = data.top_rung() if rung is None else rung
    if rung not in data.rungs:
        raise ConfigError(f"--rung: {rung} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    records = data.select(rung=rung, complete=True)
    if how == "knee":
        metrics = list(metrics or [o.name for o in data.objectives])
        usable = _usable(records, metrics, feasible_only=True)
        if not usable:
            raise ConfigError(f"--pick knee: no complete feasible trial with {', '.join(metrics)} at rung {rung}")
        pts = [[r.metric(m) for m in metrics] for r in usable]
        sems = [[r.sem(m) or 0.0 for m in metrics] for r in usable]  # unknown spread: the mean alone
        first = _usable(data.select(rung=min(data.rungs), complete=True), metrics, feasible_only=False)
        scale = [[r.metric(m) for m in metrics] for r in first]  # the search's spread (as promotion's knee)
        return usable[knee_index(pts, [data.direction(m) for m in metrics], sems=sems,  # type: ignore[arg-type]
                                 scale=scale)]
    main, tie = _BY_METRIC[how]
    usable = _usable(records, [main], feasible_only=True)
    if not usable:
        raise ConfigError(f"--pick {how}: no complete feasible trial records {main} at rung {rung}")

    def key(r: TrialRecord) -> tuple[float, float, int]:
        t = r.metric(tie)
        tie_v = math.inf if t is None else (t if data.direction(tie) == "minimize" else -t)
        m = r.metric(main)
        return (m if data.direction(main) == "minimize" else -m, tie_v, r.number)  # type: ignore[operator]

    return min(usable, key=key)


def pick_description(data: StudyData, how: str, metrics: Sequence[str] | None = None) -> str:
    """What `pick` ``how`` chooses in this study, in words: ``knee of the 3-objective front (lm_loss, recall,
    memory_bytes)`` (``metrics`` as in `pick`), ``highest recall (ties: lower memory_bytes)`` ...

    A plot over fewer metrics than the knee's front may show the knee as dominated; plots and exports say which
    front it comes from with this text.
    """
    if how not in PICKS:
        raise ConfigError(f"--pick: {how!r} is not allowed; expected one of {', '.join(PICKS)}")
    if how == "knee":
        names = list(metrics or [o.name for o in data.objectives])
        return f"knee of the {len(names)}-objective front ({', '.join(names)})"
    main, tie = _BY_METRIC[how]
    best = "lowest" if data.direction(main) == "minimize" else "highest"
    better = "lower" if data.direction(tie) == "minimize" else "higher"
    return f"{best} {main} (ties: {better} {tie})"
