"""`hyla analysis calibrate`: do the proxy rankings agree with measurements taken elsewhere?

The reference CSV has a ``layout`` column (a preset name such as ``gdn-6:1@340m`` or a layout YAML path, relative
to the CSV's folder or the current directory) and one column per metric measured at full scale (``recall``,
``lm_loss`` ...: the study's metric names). Rows are matched to study trials by layer pattern: the per-layer specs
(mixer, softmax heads, window, explicit option overrides) and depth, ignoring width, because references are
usually measured at a larger scale than the proxies. With the same shape this is the layout key.

Per metric: Spearman's rho and Kendall's tau (scipy.stats) with percentile bootstrap CIs (resampling matched
pairs, seeded, 1000 resamples). The rung used is ``--rung`` or, by default, the rung with the most matches (the
higher one on ties), so one proxy budget is compared at a time. Several trials of one layout at that rung (reused
duplicates) are averaged.

``--reference-rung R`` takes the reference from the study itself: the layouts of rung R (trials of one layout
averaged) against the same layouts at ``--rung`` (default R - 1). This is the multi-fidelity check the promotion
rule relies on: does the cheap rung rank the promoted layouts as the bigger budget does?

Beside the rank agreement (or alone, without a reference) the command reports the paper's four qualitative
findings on the compared rung's trials (`hyla.analysis.findings`: recall rises with attention, LM loss flat
across ratios, pure recall far worse, RetNet/HGRN hybrids worst), each holding, failing or undecided.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.analysis.study_data import StudyData
from hyla.space.layout import Layout

MIN_MATCHES = 3


@dataclass(frozen=True)
class MetricCalibration:
    """Rank agreement between proxy and reference for one metric."""

    metric: str
    n: int
    spearman: float
    spearman_p: float
    spearman_ci: tuple[float, float]
    kendall: float
    kendall_p: float
    kendall_ci: tuple[float, float]
    pairs: list[dict[str, Any]]  # layout, trial numbers, proxy, reference


def pattern_key(layout: Layout) -> str:
    """Width-independent identity of a layout: its per-layer specs (depth included)."""
    return json.dumps([s.to_obj() for s in layout.layers], sort_keys=True)


def read_reference(path: str | Path, data: StudyData) -> tuple[list[Layout], dict[str, list[float | None]]]:
    """Parse the reference CSV into layouts and per-metric value columns (blank cells -> None)."""
    from hyla.space.presets import load_layout

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--reference: {p}: file not found")
    with p.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ConfigError(f"--reference: {p}: no data rows")
    cols = list(rows[0].keys())
    if "layout" not in cols:
        raise ConfigError(f"--reference: {p}: missing column 'layout'; columns: {', '.join(cols)}")
    metrics = [c for c in cols if c != "layout"]
    allowed = data.metric_names()
    for c in metrics:
        if c not in allowed:
            raise ConfigError(f"--reference: {p}: column {c!r} is not a metric of study {data.name!r}; "
                              f"allowed: layout, {', '.join(allowed)}")
    if not metrics:
        raise ConfigError(f"--reference: {p}: no metric columns; add one of {', '.join(allowed)}")
    layouts, values = [], {m: [] for m in metrics}  # type: ignore[var-annotated]
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        arg = (row["layout"] or "").strip()
        cand = p.parent / arg
        try:
            layouts.append(load_layout(str(cand) if arg.endswith((".yaml", ".yml")) and cand.is_file() else arg))
        except ConfigError as e:
            raise ConfigError(f"--reference: {p} line {i}: layout {arg!r}: {e}") from None
        for m in metrics:
            cell = (row.get(m) or "").strip()
            try:
                values[m].append(float(cell) if cell else None)
            except ValueError:
                raise ConfigError(f"--reference: {p} line {i}: {m}={cell!r} is not a number") from None
    return layouts, values


def _spearman_rows(x: Any, y: Any) -> Any:
    """Spearman's rho of each row pair (average ranks for ties, as scipy.stats.spearmanr)."""
    import numpy as np
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx = rx - rx.mean(axis=1, keepdims=True)
    ry = ry - ry.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho of two matched sequences (`_spearman_rows` on one row: average ranks for ties, as
    scipy.stats.spearmanr); None for fewer than 3 pairs or a constant side, which have no ranking to compare."""
    import numpy as np

    if len(x) != len(y) or len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    return float(_spearman_rows(np.asarray([x], dtype=float), np.asarray([y], dtype=float))[0])


def _kendall_rows(x: Any, y: Any) -> Any:
    """Kendall's tau-b of each row pair (scipy.stats.kendalltau's default variant)."""
    import numpy as np

    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))


def bootstrap_ci(x: list[float], y: list[float], stat: str, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of ``stat`` (``spearman`` or ``kendall``) over resampled (x, y) pairs.

    Resamples where either side is constant have no rank correlation and are dropped. Vectorised over the
    resamples (scipy's per-call functions would take seconds for 1000 resamples).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    idx = rng.integers(0, len(xs), size=(n, len(xs)))
    fn = {"spearman": _spearman_rows, "kendall": _kendall_rows}[stat]
    # chunks keep the (resamples, n, n) sign arrays of Kendall's tau small for large reference sets
    step = max(1, 2_000_000 // (len(xs) * len(xs)))
    values = np.concatenate([fn(xs[idx[i:i + step]], ys[idx[i:i + step]]) for i in range(0, n, step)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return (float(lo), float(hi))


def reference_from_rung(data: StudyData, rung: int, metrics: list[str] | None = None
                        ) -> tuple[list[Layout], dict[str, list[float | None]]]:
    """The study's own rung ``rung`` as the reference: one row per layout (trials of a layout averaged).

    Multi-fidelity consistency: a promotion rule assumes that rung r ranks layouts as rung r+1 (a bigger budget)
    would; ``calibrate(data, reference_rung=r + 1, rung=r)`` measures it on the promoted layouts.
    """
    if rung not in data.rungs:
        raise ConfigError(f"--reference-rung: {rung} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    names = metrics or [o.name for o in data.objectives]
    groups: dict[str, list[Any]] = {}
    for t in data.select(rung=rung, complete=True):
        if t.layout is not None:
            groups.setdefault(pattern_key(t.layout), []).append(t)
    layouts = [ts[0].layout for ts in groups.values()]
    values: dict[str, list[float | None]] = {}
    for m in names:
        col = []
        for ts in groups.values():
            vals = [t.metric(m) for t in ts if t.metric(m) is not None]
            col.append(sum(vals) / len(vals) if vals else None)
        values[m] = col
    return layouts, values


def calibrate(data: StudyData, reference: str | Path | None = None, rung: int | None = None, n_boot: int = 1000,
              seed: int = 0, reference_rung: int | None = None) -> tuple[int, list[MetricCalibration]]:
    """Match reference rows to trials and compute rank agreement per metric.

    Args:
        data: the study.
        reference: a reference CSV (module docstring); or None with ``reference_rung``.
        rung: the proxy rung compared (default: the one with the most matches; with ``reference_rung`` the rung
            below it).
        reference_rung: use this rung of the study itself as the reference (multi-fidelity consistency).

    Returns:
        (the rung used, one `MetricCalibration` per metric column).

    Raises:
        ConfigError: no reference, or fewer than 3 reference layouts match complete trials.
    """
    from scipy.stats import kendalltau, spearmanr

    if (reference is None) == (reference_rung is None):
        raise ConfigError("calibrate: give exactly one of --reference CSV and --reference-rung R")
    if reference_rung is not None:
        layouts, values = reference_from_rung(data, reference_rung)
        rung = reference_rung - 1 if rung is None else rung
        if rung == reference_rung:
            raise ConfigError(f"--rung: {rung} is the reference rung itself; compare another rung")
    else:
        layouts, values = read_reference(reference, data)
    keys = [pattern_key(lay) for lay in layouts]
    by_rung: dict[int, dict[str, list]] = {}
    for t in data.trials:
        if t.complete and t.layout is not None:
            by_rung.setdefault(t.rung, {}).setdefault(pattern_key(t.layout), []).append(t)
    if rung is None:
        counts = {r: sum(k in m for k in set(keys)) for r, m in by_rung.items()}
        rung = max(counts, key=lambda r: (counts[r], r)) if counts else 0
    elif rung not in data.rungs:
        raise ConfigError(f"--rung: {rung} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    matches = by_rung.get(rung, {})
    out = []
    for metric, refs in values.items():
        pairs = []
        for lay, key, ref in zip(layouts, keys, refs):
            trials = [t for t in matches.get(key, []) if t.metric(metric) is not None]
            if ref is None or not trials:
                continue
            proxy = sum(t.metric(metric) for t in trials) / len(trials)
            pairs.append({"layout": lay.name or lay.layer_string(), "layer_string": lay.layer_string(),
                          "trials": [t.number for t in trials], "proxy": proxy, "reference": ref})
        if len(pairs) < MIN_MATCHES:
            raise ConfigError(f"--reference: only {len(pairs)} layout(s) with a {metric} value match complete "
                              f"trials of study {data.name!r} at rung {rung}; need at least {MIN_MATCHES}")
        x = [p["proxy"] for p in pairs]
        y = [p["reference"] for p in pairs]
        rho, rho_p = spearmanr(x, y)
        tau, tau_p = kendalltau(x, y)
        out.append(MetricCalibration(
            metric=metric, n=len(pairs), spearman=float(rho), spearman_p=float(rho_p),
            spearman_ci=bootstrap_ci(x, y, "spearman", n_boot, seed), kendall=float(tau), kendall_p=float(tau_p),
            kendall_ci=bootstrap_ci(x, y, "kendall", n_boot, seed), pairs=pairs))
    return rung, out


def calibration_figure(data: StudyData, rung: int, results: list[MetricCalibration]) -> Any:
    """Proxy (x) vs reference (y) scatter, one panel per metric, rank statistics in the panel titles."""
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    titles = [f"{r.metric}: Spearman {r.spearman:.2f} [{r.spearman_ci[0]:.2f}, {r.spearman_ci[1]:.2f}], "
              f"Kendall {r.kendall:.2f} (n={r.n})" for r in results]
    fig = make_subplots(rows=1, cols=len(results), subplot_titles=titles)
    for i, r in enumerate(results, start=1):
        fig.add_trace(go.Scatter(
            x=[p["proxy"] for p in r.pairs], y=[p["reference"] for p in r.pairs], mode="markers+text",
            text=[p["layout"] for p in r.pairs], textposition="top center", textfont=dict(size=9),
            hovertext=[f"{p['layout']} ({p['layer_string']})<br>trials {p['trials']}<br>proxy {p['proxy']:.4g}"
                       f"<br>reference {p['reference']:.4g}" for p in r.pairs], hoverinfo="text",
            marker=dict(size=9), name=r.metric), row=1, col=i)
        fig.update_xaxes(title_text=f"proxy {r.metric} (rung {rung})", row=1, col=i)
        fig.update_yaxes(title_text=f"reference {r.metric}", row=1, col=i)
    fig.update_layout(title=f"{data.name}: proxy vs reference", template="plotly_white", showlegend=False,
                      height=520)
    return fig


def write_calibration(data: StudyData, rung: int, results: list[MetricCalibration], out_dir: str | Path,
                      findings: dict[str, Any] | None = None) -> list[Path]:
    """Write ``calibration.json`` (with the paper's ``findings`` when given) and, with rank results,
    ``calibration.html`` into ``out_dir``."""
    from hyla.analysis.plots import write_html

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js = out / "calibration.json"
    js.write_text(json.dumps({"study": data.name, "rung": rung, "metrics": [asdict(r) for r in results],
                              "paper_findings": findings}, indent=2, default=str) + "\n")
    if not results:
        return [js]
    return [js, write_html(calibration_figure(data, rung, results), out / "calibration.html")]
