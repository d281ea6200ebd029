"""The one registry of what hyla measures: every objective/metric, its direction, label, formatter, the
`ProxyResult` field it reads and whether it is exact; plus the one dominance routine and the one byte formatter.

Search (`hyla.search.config` objectives, trial values, sems, console tables) and analysis (`study_data`, plots,
report, Pareto picks) read this table; no package keeps its own list of metric names. Exact metrics (``exact``)
are computed from the layout by `hyla.space.cost` (``cost`` names the report and attribute), so they carry no
seed noise (standard error 0).

Dominance works on "smaller is better" values (`oriented`): ``a`` dominates ``b`` when it is <= in every
objective and < in at least one. `better` compares oriented values, `sort_fronts` is the fast non-dominated sort (Deb et
al. 2002) under any strict partial order; `non_dominated_fronts` uses the two. The noise-aware relation lives in
`hyla.search.rungs` and is built on these.

Base layer: imports nothing of hyla but `hyla.config`, and no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hyla.config import ConfigError, did_you_mean

#: the two optimisation directions
DIRECTIONS: tuple[str, ...] = ("minimize", "maximize")


def human_bytes(n: float) -> str:
    """``98304`` -> ``'96.0 KiB'`` (binary units; whole bytes below 1 KiB)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def millions(n: float) -> str:
    """``340_123_456`` -> ``'340.123M'`` (parameter counts in tables)."""
    return f"{n / 1e6:.3f}M"


def number(v: float) -> str:
    """Four significant digits: losses, recall, throughput (``2.3456`` -> ``'2.346'``)."""
    return f"{v:.4g}"


@dataclass(frozen=True)
class Metric:
    """One thing hyla measures about a layout.

    Attributes:
        name: the objective / metric name in study configs, storage and plots (``lm_loss``).
        direction: ``minimize`` or ``maximize``.
        label: axis label for plots (with the unit where there is one).
        unit: short unit (``bytes``, ``params``, ``tokens/s``; ``""`` for a loss or a score).
        field: the `ProxyResult` field holding it (``lm_val_loss`` for ``lm_loss``).
        formatter: value -> table text (bytes -> `human_bytes`, counts -> `millions`, scores -> `number`).
        exact: computed exactly from the layout (no seed noise, sem 0).
        cost: for exact metrics, (``memory`` | ``params``, attribute): where `hyla.space.cost` has it
            (``inference_memory(layout, context)`` or ``param_count(layout)``).
        description: one line for people.
    """

    name: str
    direction: str
    label: str
    unit: str
    field: str
    formatter: Callable[[float], str]
    exact: bool = False
    cost: tuple[str, str] | None = None
    description: str = ""

    @property
    def sign(self) -> float:
        """+1 when smaller is better, -1 when larger is better (multiply to get a minimisation value)."""
        return 1.0 if self.direction == "minimize" else -1.0

    def format(self, value: float) -> str:
        return self.formatter(value)


#: every metric hyla knows, by name; the order is the order of tables and of `hyla analysis` metric lists
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("lm_loss", "minimize", "LM val loss", "", "lm_val_loss", number,
           description="held-out LM loss of the proxy"),
    Metric("recall", "maximize", "recall (mean accuracy over levels)", "", "recall", number,
           description="recall-suite score of the proxy"),
    Metric("recall_auc", "maximize", "recall AUC (mean accuracy over the probe's training)", "", "recall_auc",
           number, description="area under the recall probe's learning curve: how early recall was learned"),
    Metric("kl_to_teacher", "minimize", "KL to the teacher (nats / token)", "", "kl_to_teacher", number,
           description="held-out KL(teacher || layout) of a teacher-initialised proxy (supernet)"),
    Metric("kv_bytes", "minimize", "KV cache bytes / seq", "bytes", "kv_bytes", human_bytes, exact=True,
           cost=("memory", "kv_bytes"), description="softmax KV cache per sequence at the study's context"),
    Metric("memory_bytes", "minimize", "KV + state bytes / seq", "bytes", "state_bytes", human_bytes, exact=True,
           cost=("memory", "total_bytes"),
           description="KV + recurrent + conv state per sequence at the study's context"),
    Metric("params", "minimize", "parameters", "params", "params", millions, exact=True, cost=("params", "total"),
           description="total parameters"),
    Metric("tokens_per_s", "maximize", "tokens / s", "tokens/s", "tokens_per_s", number,
           description="proxy training throughput"),
)}
#: preferred plot axes: x = the first exact cost a study has, y = the first proxy score
COST_AXES: tuple[str, ...] = ("memory_bytes", "kv_bytes", "params")
SCORE_AXES: tuple[str, ...] = ("recall", "recall_auc", "lm_loss", "kl_to_teacher", "tokens_per_s")


def get_metric(name: str, where: str = "metric") -> Metric:
    """The registered metric ``name``; an unknown name is a one-line `ConfigError` listing the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"{where}: unknown metric {name!r}{did_you_mean(name, METRICS)}; expected one of "
                          f"{', '.join(METRICS)}") from None


def result_field(name: str) -> str:
    """The ProxyResult key of a metric (an unregistered name is its own key)."""
    m = METRICS.get(name)
    return m.field if m is not None else name


def is_exact(name: str) -> bool:
    """True for metrics computed exactly from the layout (no seed noise)."""
    m = METRICS.get(name)
    return m is not None and m.exact


def format_value(name: str, value: float | None) -> str:
    """Table text for a metric value (``""`` for None; an unregistered name gets `number`)."""
    if value is None:
        return ""
    m = METRICS.get(name)
    return (m.formatter if m is not None else number)(value)


# -- dominance ------------------------------------------------------------------------------------------------

def check_directions(directions: Sequence[str]) -> None:
    """Refuse anything but ``minimize``/``maximize`` with a one-line `ConfigError`."""
    for d in directions:
        if d not in DIRECTIONS:
            raise ConfigError(f"direction: {d!r} is not allowed; expected one of {', '.join(DIRECTIONS)}")


def oriented(values: Sequence[float], directions: Sequence[str]) -> tuple[float, ...]:
    """Values turned into 'smaller is better' (maximised ones negated) so dominance is one comparison."""
    return tuple(v if d == "minimize" else -v for v, d in zip(values, directions))


def better(a: Sequence[float], b: Sequence[float]) -> bool:
    """Dominance of oriented values (smaller is better): ``a`` <= ``b`` everywhere and < somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """True when ``a`` is at least as good as ``b`` in every objective and strictly better in one."""
    check_directions(directions)
    return better(oriented(a, directions), oriented(b, directions))


def utopia_distances(points: Sequence[Sequence[float]], directions: Sequence[str],
                     sems: Sequence[Sequence[float]] | None = None, z: float = 0.0,
                     scale: Sequence[Sequence[float]] = ()) -> list[float]:
    """Each point's distance to the utopia point of ``points`` (the best value of every objective among them); the
    knee is the point with the smallest distance.

    Every objective is normalised by its range over the points and ``scale`` (more value vectors, e.g. every trial
    of a search, so that two finalists are measured against the spread the search saw; an objective with range 0
    is left out), so the distance has no units. With ``sems`` (one standard error per objective and point), a
    point's gap to the best counts only beyond noise: ``max(0, (v - z*sem) - min_j (v_j + z*sem_j))`` in
    smaller-is-better orientation, so objectives whose differences are all within noise do not move the knee.
    Without sems (or z = 0) the gap is ``v - min_j v_j``.
    """
    check_directions(directions)
    pts = [oriented(p, directions) for p in points]
    errs = [list(s) for s in sems] if sems is not None else [[0.0] * len(p) for p in pts]
    if not pts:
        return []
    spans = [max(col) - min(col) for col in zip(*pts, *(oriented(v, directions) for v in scale))]
    best = [min(p[m] + z * e[m] for p, e in zip(pts, errs)) for m in range(len(spans))]
    return [math.hypot(*(max(0.0, p[m] - z * e[m] - best[m]) / span for m, span in enumerate(spans) if span > 0))
            for p, e in zip(pts, errs)]


def sort_fronts(n: int, better: Callable[[int, int], bool]) -> list[list[int]]:
    """Fast non-dominated sort (Deb et al. 2002) of ``n`` items under a strict partial order ``better(i, j)``.

    Returns:
        Fronts of item indices, best front first; the first front in index order, later ones sorted.
    """
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    counts = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if better(i, j):
                dominated_by[i].append(j)
                counts[j] += 1
            elif better(j, i):
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


def non_dominated_fronts(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[list[int]]:
    """Exact non-dominated fronts of point indices, best front first (the first in input order)."""
    check_directions(directions)
    pts = [oriented(p, directions) for p in points]
    return sort_fronts(len(pts), lambda i, j: better(pts[i], pts[j]))
