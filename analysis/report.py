"""`hyla analysis report`: one self-contained HTML page per study.

Sections: study config, per-rung counts, Pareto plots (the standard views that the study's metrics allow, with
±z·sem error bars), layer diagrams of the best layout per trade-off (`hyla.analysis.pareto.PICKS`), seed noise
along each rung's front (`hyla.analysis.significance`: is each neighbour really different?), a sortable trial
table (mean ± sem and seed count per metric; a few lines of inline JS, no external assets) and a failure summary.
plotly.js is inlined once, so the page opens offline.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
import yaml

from hyla.config import ConfigError
from hyla.metrics import format_value
from hyla.analysis.pareto import PICKS, pick, pick_description
from hyla.analysis.significance import front_pair_tests
from hyla.analysis.study_data import StudyData, TrialRecord
from hyla.space.layout import Layout, letter_legend, mixer_color

_SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const asc = th.dataset.dir !== 'asc';
  th.closest('tr').querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = td => { const v = td.dataset.v ?? td.textContent; const n = parseFloat(v);
                      return isNaN(n) ? v : n; };
  Array.from(body.rows).sort((a, b) => {
    const x = key(a.cells[col]), y = key(b.cells[col]);
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
    return asc ? c : -c;
  }).forEach(r => body.appendChild(r));
}));
"""
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;max-width:1300px;color:#222}
h1{margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th{background:#f4f4f4;cursor:pointer;position:sticky;top:0} td.l,th.l{text-align:left;font-family:monospace}
tr.fail td{color:#a00} tr.infeasible td{color:#888} pre{background:#f8f8f8;padding:10px;overflow:auto}
td.sig{color:#070} td.ns{color:#a60}
.diagram{margin:10px 0 18px} .legend span{display:inline-block;margin-right:12px;font-size:13px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:middle}
"""


def layer_diagram(layout: Layout, cell: int = 18, height: int = 48) -> str:
    """Inline SVG: one column per layer; a head-wise layer is split into its heads (softmax heads red).

    Colours: `hyla.space.layout.mixer_color` (a linear kind's `MixerKind.color`)."""
    parts = []
    for i, spec in enumerate(layout.layers):
        x = i * (cell + 2)
        tip = f"layer {i}: {spec.to_obj() if isinstance(spec.to_obj(), str) else json.dumps(spec.to_obj())}"
        if spec.attn_heads:
            h = height / layout.num_heads
            for k in range(layout.num_heads):
                kind = "attn" if k < spec.attn_heads else spec.mixer
                parts.append(f'<rect x="{x}" y="{k * h:.2f}" width="{cell}" height="{h - 1:.2f}" '
                             f'fill="{mixer_color(kind)}"><title>{html.escape(tip)}</title></rect>')
        else:
            parts.append(f'<rect x="{x}" y="0" width="{cell}" height="{height}" '
                         f'fill="{mixer_color(spec.mixer)}"><title>{html.escape(tip)}</title></rect>')
        if spec.window is not None:  # a sliding window: mark the softmax part with a hatch line
            parts.append(f'<line x1="{x}" y1="{height + 3}" x2="{x + cell}" y2="{height + 3}" stroke="#000" '
                         'stroke-dasharray="2,2"/>')
        parts.append(f'<text x="{x + cell / 2}" y="{height + 14}" font-size="9" text-anchor="middle">{i}</text>')
    width = layout.n_layers * (cell + 2)
    return (f'<svg class="layers" width="{width}" height="{height + 18}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _legend(kinds: set[str]) -> str:
    items = "".join(f'<span><i style="background:{mixer_color(k)}"></i>{html.escape(k)}</span>'
                    for k in sorted(kinds))
    return f'<div class="legend">{items}<span>(split columns: head-wise layers; dashed: sliding window)</span></div>'


def _mean_sem(t: TrialRecord, m: str) -> str:
    """``mean ± sem`` when the metric has a spread over seeds, else the mean alone."""
    v, s = t.metric(m), t.sem(m)
    return format_value(m, v) + (f" ± {s:.2g}" if v is not None and s else "")


def _trial_table(data: StudyData) -> str:
    metrics = data.metric_names()
    head = ["rung", "trial", "state", "layout", "preset", "feasible", "seeds", *metrics, "parent", "note"]
    rows = []
    for t in data.trials:
        cls = "fail" if t.state == "FAIL" else ("infeasible" if not t.feasible else "")
        cells = [f"<td>{t.rung}</td>", f"<td>{t.number}</td>", f'<td class="l">{t.state}</td>',
                 f'<td class="l">{html.escape(t.layout_string)}</td>',
                 f'<td class="l">{html.escape(t.preset or "")}</td>', f"<td>{'yes' if t.feasible else 'no'}</td>",
                 f"<td>{t.n_seeds}</td>"]
        for m in metrics:
            v = t.metric(m)
            cells.append(f'<td data-v="{"" if v is None else v}">{_mean_sem(t, m)}</td>')
        cells.append(f"<td>{'' if t.parent is None else t.parent}</td>")
        repeat = t.user_attrs.get("repeat_of")  # a pruned proposal of a layout the rung had (search/fresh.py)
        note = t.fail_reason or (f"repeat of trial {repeat}: not trained" if repeat is not None else "")
        cells.append(f'<td class="l">{html.escape(note[:120])}</td>')
        rows.append(f'<tr class="{cls}">{"".join(cells)}</tr>')
    ths = "".join(f'<th class="{"l" if h in ("state", "layout", "preset", "note") else ""}">'
                  f"{html.escape(h)}</th>" for h in head)
    legend = letter_legend(t.layout_string for t in data.trials)
    return (f'<table class="sortable" id="trials"><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>" + (f"<p><small>{html.escape(legend)}</small></p>" if legend else ""))


def _noise_section(data: StudyData, z: float) -> str:
    """Per rung: neighbouring front points and whether their recall / lm_loss differ beyond seed noise."""
    metrics = [m for m in ("recall", "lm_loss") if any(t.metric(m) is not None for t in data.trials if t.complete)]
    out = [("<p>Each rung's Pareto front sorted by its cost axis; for each neighbouring pair, Welch's t-test on the "
            "per-seed values (two-sided, significant when p &lt; 0.05; needs ≥ 2 seeds on both sides) and whether "
            f"the intervals mean ± {z:g} s.e.m. are separated (the rule promotion uses).</p>")]
    for rung in data.rungs:
        tests = front_pair_tests(data, rung, metrics=metrics, z=z) if metrics else []
        if not tests:
            out.append(f"<p>rung {rung}: fewer than two front points with {' / '.join(metrics) or 'metrics'}.</p>")
            continue
        rows = []
        for t in tests:
            cls = {True: "sig", False: "ns", None: ""}[t.significant]
            rows.append(f"<tr><td>{t.a.number} → {t.b.number}</td>"
                        f'<td class="l">{html.escape(t.a.layout_string)} → {html.escape(t.b.layout_string)}</td>'
                        f'<td class="l">{html.escape(t.metric)}</td><td>{_mean_sem(t.a, t.metric)}</td>'
                        f"<td>{_mean_sem(t.b, t.metric)}</td><td>{t.diff:+.3g}</td>"
                        f'<td class="l {cls}">{html.escape(t.verdict)}</td>'
                        f'<td class="l">{html.escape(t.intervals)}</td></tr>')
        ths = "".join(f"<th>{h}</th>" for h in ("trials", "layouts", "metric", "a", "b", "b − a", "Welch t-test",
                                               f"intervals (±{z:g} s.e.m.)"))
        out.append(f'<h3>rung {rung}</h3><table class="noise" id="noise-rung{rung}"><thead><tr>{ths}</tr></thead>'
                   f"<tbody>{''.join(rows)}</tbody></table>")
    return "".join(out)


def _failures(data: StudyData) -> str:
    failed = [t for t in data.trials if t.state == "FAIL"]
    if not failed:
        return "<p>No failed trials.</p>"
    reasons = Counter((t.fail_reason or "no reason recorded").split(":")[0].strip() for t in failed)
    items = "".join(f"<li><b>{n}</b> × {html.escape(r)}</li>" for r, n in reasons.most_common())
    detail = "".join(f"<li>rung {t.rung} trial {t.number} <code>{html.escape(t.layout_string)}</code>: "
                     f"{html.escape(t.fail_reason or 'no reason recorded')}</li>" for t in failed[:50])
    return f"<p>{len(failed)} failed trial(s) by cause:</p><ul>{items}</ul><details><summary>all</summary>" \
           f"<ul>{detail}</ul></details>"


def _best_layouts(data: StudyData) -> str:
    out, kinds = [], set()
    for how in PICKS:
        try:
            t = pick(data, how)
        except ConfigError as e:
            out.append(f"<p><b>{how}</b>: not available ({html.escape(str(e))})</p>")
            continue
        assert t.layout is not None
        kinds |= {s.mixer for s in t.layout.layers} | ({"attn"} if any(s.attn_heads for s in t.layout.layers)
                                                       else set())
        vals = ", ".join(f"{m} {format_value(m, t.metric(m))}" for m in data.metric_names() if t.metric(m) is not None)
        out.append(f'<div class="diagram"><b>{how}</b>: trial {t.number} (rung {t.rung}) '
                   f"<code>{html.escape(t.layout_string)}</code>{' — ' + html.escape(t.preset) if t.preset else ''}"
                   f"<br><small>{html.escape(pick_description(data, how))}: {html.escape(vals)}</small><br>"
                   f"{layer_diagram(t.layout)}</div>")
    return _legend(kinds) + "".join(out)


def _plots(data: StudyData, z: float) -> str:
    from hyla.analysis.plots import STANDARD_VIEWS, pareto_figure

    names = set(data.metric_names())
    done = [t for t in data.trials if t.complete]
    views = [v for v in STANDARD_VIEWS if set(v) <= names and all(t.metric(m) is not None for t in done for m in v)]
    if not views and len(data.objectives) >= 2:
        views = [(data.objectives[0].name, data.objectives[1].name)]
    chunks = []
    for i, axes in enumerate(views):
        fig = pareto_figure(data, axes=axes, z=z)
        chunks.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0), default_width="100%"))
    return "".join(chunks) or "<p>No two metrics to plot.</p>"


def render_report(data: StudyData, z: float = 2.0) -> str:
    """The whole report page as one HTML string (``z``: error bars and intervals are mean ± z·sem)."""
    counts = []
    for r in data.rungs:
        c = Counter(t.state for t in data.select(rung=r))
        counts.append(f"<li>rung {r}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(c.items())) + "</li>")
    objs = ", ".join(f"{o.name} ({o.direction})" for o in data.objectives)
    config = yaml.safe_dump(data.config, sort_keys=False) if data.config else "(no config recorded)"
    title = html.escape(f"hyla study {data.name}")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{PAGE_CSS}</style></head><body>
<h1>{title}</h1><p>source: <code>{html.escape(data.source)}</code> — objectives: {html.escape(objs)}</p>
<ul>{''.join(counts)}</ul>
<h2>Pareto fronts</h2>{_plots(data, z)}
<h2>Best layouts per trade-off</h2><p>Picked among complete, feasible trials of the highest rung.</p>
{_best_layouts(data)}
<h2>Seed noise along the fronts</h2>{_noise_section(data, z)}
<h2>Trials</h2><p>Values are means over seeds (± one s.e.m. where there is a spread). Click a column header to
sort.</p>{_trial_table(data)}
<h2>Failures</h2>{_failures(data)}
<h2>Study config</h2><pre>{html.escape(config)}</pre>
<script>{_SORT_JS}</script></body></html>
"""


def write_report(data: StudyData, path: str | Path, z: float = 2.0) -> Path:
    """Write the report page to ``path`` (parent directories created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_report(data, z), encoding="utf-8")
    return p

