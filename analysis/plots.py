"""Pareto-front figures with plotly (imported lazily: ``import hyla.analysis`` stays light).

One figure shows 2 objectives (scatter) or 3 (3-D scatter). Each rung gets its own traces and a dropdown
switches between rungs (rung proxies differ in budget, so their numbers are not mixed on one plot). Per rung:
front points (solid, joined by a step line in 2-D), dominated points (dimmed), infeasible points (``x``), and
paper-grid presets drawn as a labelled reference family (diamonds). Failed trials are not plotted but counted in
the title. Hover shows the layer string, trial number, rung and every metric.

The knee that ``hyla analysis export --pick knee`` takes (`hyla.analysis.pareto.pick`) is marked with a star. It is
the knee of the front over all the study's objectives, so in a view of fewer metrics it can lie among the
dominated points: its legend entry, hover and the title say which front it comes from.

Seed noise: a metric with a recorded standard error of the mean (``TrialRecord.sem``) gets error bars of
``±z·sem`` (z = 2 by default; with 3 seeds that is about an 80 % t-interval) on its axis, only on points whose sem
is > 0, hover shows ``mean ± sem (n seeds)``, and the title says what the bars are.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.metrics import METRICS
from hyla.analysis.pareto import non_dominated, pick, pick_description
from hyla.analysis.study_data import StudyData, TrialRecord

#: The three standard views: recall vs memory is the headline trade-off.
STANDARD_VIEWS: tuple[tuple[str, str], ...] = (("memory_bytes", "recall"), ("memory_bytes", "lm_loss"),
                                               ("lm_loss", "recall"))
_BROWSERS = ("/usr/bin/chromium", "/usr/bin/chromium-headless-shell", "/usr/bin/chromium-browser",
             "/usr/bin/google-chrome")


def _label(name: str) -> str:
    """Axis label of a metric (`hyla.metrics`); an unregistered name is its own label."""
    m = METRICS.get(name)
    return m.label if m is not None else name


def _go() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise ConfigError("plots: plotly is not installed; pip install plotly") from None
    return go


def _hover(r: TrialRecord, names: Sequence[str]) -> str:
    parts = [f"<b>{r.layout_string}</b>", f"trial {r.number} (rung {r.rung})"]
    if r.preset:
        parts.append(f"preset {r.preset}")
    for n in names:
        v, sem = r.metric(n), r.sem(n)
        if v is not None and sem:
            parts.append(f"{n}: {v:.4g} ± {sem:.2g} ({r.n_seeds} seed{'s' * (r.n_seeds != 1)})")
        elif v is not None:
            parts.append(f"{n}: {v:.4g}")
    if not r.feasible:
        parts.append("infeasible: " + ", ".join(f"{k}={v:.3g}" for k, v in r.constraints.items() if v > 0))
    return "<br>".join(parts)


def _trace(go: Any, recs: list[TrialRecord], axes: Sequence[str], names: Sequence[str], z: float,
           **kw: Any) -> Any:
    coords = {k: [r.metric(a) for r in recs] for k, a in zip("xyz", axes)}
    for k, a in zip("xyz", axes):
        bars = [z * (r.sem(a) or 0.0) for r in recs]  # 0 where the sem is 0 or unknown: no bar
        if any(b > 0 for b in bars):
            kw[f"error_{k}"] = {"type": "data", "array": bars, "visible": True, "thickness": 1.2, "width": 3}
    text = [_hover(r, names) for r in recs]
    cls = go.Scatter3d if len(axes) == 3 else go.Scatter
    return cls(**coords, hovertext=text, hoverinfo="text", **kw)


def noise_note(records: Sequence[TrialRecord], axes: Sequence[str], z: float = 2.0) -> str:
    """What the error bars are, e.g. ``error bars: ±2 s.e.m. over 3 seeds`` ("" when no point has one)."""
    seeds = sorted({r.n_seeds for r in records if any((r.sem(a) or 0.0) > 0 for a in axes)})
    if not seeds or z == 0:
        return ""
    n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    return f"error bars: ±{z:g} s.e.m. over {n} seed{'s' * (n != '1')}"


def rung_traces(data: StudyData, rung: int, axes: Sequence[str], z: float = 2.0) -> tuple[list[Any], int]:
    """Traces of one rung (front, dominated, infeasible, presets) and the number of failed trials left out.

    Points whose metric has a sem > 0 get error bars of ``±z·sem`` on that axis.
    """
    go = _go()
    names = data.metric_names()
    recs = data.select(rung=rung)
    failed = sum(1 for r in recs if r.state == "FAIL")
    done = [r for r in recs if r.complete and all(r.metric(a) is not None for a in axes)]
    feas = [r for r in done if r.feasible]
    dirs = [data.direction(a) for a in axes]
    front_idx = set(non_dominated([[r.metric(a) for a in axes] for r in feas], dirs))  # type: ignore[misc]
    front = sorted((feas[i] for i in front_idx), key=lambda r: r.metric(axes[0]))  # type: ignore[arg-type,return-value]
    dominated = [r for i, r in enumerate(feas) if i not in front_idx and not r.preset]
    infeasible = [r for r in done if not r.feasible]
    presets = [r for r in feas if r.preset]
    is3d = len(axes) == 3
    size = 4 if is3d else 9
    traces = [
        _trace(go, front, axes, names, z, name=f"Pareto front (rung {rung})",
               mode="markers" if is3d else "lines+markers", marker={"size": size + 2, "color": "#d62728"},
               **({} if is3d else {"line": {"shape": "hv", "color": "#d62728", "width": 1.5}})),
        _trace(go, dominated, axes, names, z, name="dominated", mode="markers",
               marker={"size": size, "color": "#1f77b4", "opacity": 0.35}),
        _trace(go, infeasible, axes, names, z, name="infeasible (constraint)", mode="markers",
               marker={"size": size, "color": "#7f7f7f", "symbol": "x", "opacity": 0.6}),
        _trace(go, presets, axes, names, z, name="paper grid", mode="markers+text",
               text=[r.preset for r in presets], textposition="top center", textfont={"size": 9},
               marker={"size": size + 1, "color": "#2ca02c", "symbol": "diamond",
                       "line": {"width": 1, "color": "black"}}),
    ]
    knee = _knee_trace(go, data, rung, axes, names, front, size)
    return traces + ([knee] if knee is not None else []), failed


def _knee_trace(go: Any, data: StudyData, rung: int, axes: Sequence[str], names: Sequence[str],
                front: list[TrialRecord], size: int) -> Any:
    """A star (3-D: a cross) on the trial ``--pick knee`` exports at this rung, named after the front it is the
    knee of."""
    try:
        knee = pick(data, "knee", rung)
    except ConfigError:  # no complete feasible trial with every objective at this rung
        return None
    if any(knee.metric(a) is None for a in axes):
        return None
    desc = pick_description(data, "knee")
    where = "also on this view's front" if knee in front else f"dominated in this {len(axes)}-metric view only"
    flag = "--pick knee" + ("" if rung == data.top_rung() else f" --rung {rung}")
    symbol = "cross" if len(axes) == 3 else "star"  # 3-D scatters have no star
    # z = 0: no error bars on the star, its point already has them in its own trace
    trace = _trace(go, [knee], axes, names, 0.0, name=f"export --pick knee: {desc}", mode="markers",
                   marker={"size": size + 9, "color": "#ff7f0e", "symbol": symbol,
                           "line": {"width": 1, "color": "black"}})
    trace.hovertext = [f"{trace.hovertext[0]}<br><i>export {flag}: {desc}; {where}</i>"]
    return trace


def knee_note(data: StudyData, axes: Sequence[str]) -> str:
    """The title's line about the starred knee when it is picked on other metrics than ``axes`` ("" otherwise)."""
    metrics = [o.name for o in data.objectives]
    if set(metrics) == set(axes):
        return ""
    mark = "orange ✚" if len(axes) == 3 else "orange ★"
    return f"{mark} = export --pick knee: the {pick_description(data, 'knee')}, so it can look dominated here"


def pareto_figure(data: StudyData, axes: Sequence[str] = ("memory_bytes", "recall"),
                  rungs: Sequence[int] | None = None, title: str | None = None, z: float = 2.0) -> Any:
    """A Pareto-front figure over 2 or 3 metrics, one dropdown entry per rung.

    Args:
        data: the loaded study.
        axes: metric names for x, y (and z); see ``StudyData.metric_names()``.
        rungs: rungs to include (default all, highest first: its proxies are the longest); the first is shown
            initially.
        title: figure title (default: study name and metrics).
        z: error-bar half-width in standard errors of the mean (0 = no bars).

    Returns:
        A ``plotly.graph_objects.Figure``.
    """
    go = _go()
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
        raise ConfigError(f"pareto z: {z!r} is not allowed; expected a finite number >= 0")
    if len(axes) not in (2, 3) or len(set(axes)) != len(axes):
        raise ConfigError(f"pareto axes: {list(axes)} must be 2 or 3 distinct metrics")
    for a in axes:
        data.check_metric(a, "pareto axis:")
    rungs = list(rungs if rungs is not None else reversed(data.rungs))
    for r in rungs:
        if r not in data.rungs:
            raise ConfigError(f"--rung: {r} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    if not rungs:
        raise ConfigError(f"study {data.name!r}: no trials to plot")
    fig = go.Figure()
    per_rung: list[tuple[int, int, int]] = []  # (rung, trace count, failed)
    for i, rung in enumerate(rungs):
        traces, failed = rung_traces(data, rung, axes, z)
        for t in traces:
            t.visible = i == 0
            fig.add_trace(t)
        per_rung.append((rung, len(traces), failed))
    base = title or f"{data.name}: " + " vs ".join(_label(a) for a in reversed(axes[:2]))

    def head(rung: int, failed: int) -> str:
        note = noise_note([r for r in data.select(rung=rung) if r.complete], axes, z)
        if any(t.name.startswith("export --pick knee") for t in fig.data):
            note = "; ".join(n for n in (note, knee_note(data, axes)) if n)
        return (f"{base} (rung {rung}; {failed} failed trial{'s' * (failed != 1)} not shown)"
                + (f"<br><sup>{note}</sup>" if note else ""))

    fig.update_layout(title=head(per_rung[0][0], per_rung[0][2]), template="plotly_white",
                      legend={"orientation": "h", "y": -0.18}, margin={"t": 70}, height=560)
    arrow = {a: (" (lower is better)" if data.direction(a) == "minimize" else " (higher is better)") for a in axes}
    if len(axes) == 3:
        fig.update_layout(scene={"xaxis_title": axes[0] + arrow[axes[0]], "yaxis_title": axes[1] + arrow[axes[1]],
                                 "zaxis_title": axes[2] + arrow[axes[2]]})
    else:
        fig.update_xaxes(title=_label(axes[0]) + arrow[axes[0]])
        fig.update_yaxes(title=_label(axes[1]) + arrow[axes[1]])
        if axes[0] in METRICS and METRICS[axes[0]].unit in ("bytes", "params"):
            fig.update_xaxes(type="log")  # memory spans orders of magnitude (KV grows with context)
    if len(rungs) > 1:
        total = sum(n for _, n, _ in per_rung)
        buttons, start = [], 0
        for rung, n, failed in per_rung:
            vis = [start <= k < start + n for k in range(total)]
            buttons.append({"label": f"rung {rung}", "method": "update",
                            "args": [{"visible": vis}, {"title": head(rung, failed)}]})
            start += n
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.12, "yanchor": "top"}])
    return fig


def write_html(fig: Any, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js inlined, so it opens offline)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(p), include_plotlyjs=True, full_html=True)
    return p


def find_browser() -> str | None:
    """A Chrome/Chromium binary for kaleido: $BROWSER_PATH, Debian's chromium(-headless-shell), or PATH."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for b in _BROWSERS:
        if Path(b).is_file():
            return b
    for name in ("chromium", "chromium-headless-shell", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def write_png(fig: Any, path: str | Path, width: int = 1100, height: int = 650) -> Path:
    """Render a static PNG with kaleido (needs a Chrome/Chromium binary)."""
    browser = find_browser()
    if browser is None:
        raise ConfigError("PNG export needs a Chrome/Chromium: apt-get install chromium (or chromium-headless-shell)")
    os.environ["BROWSER_PATH"] = browser  # kaleido/choreographer look here before their own download
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.write_image(str(p), format="png", width=width, height=height)
    return p
