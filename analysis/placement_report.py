"""The report page of ``hyla analysis placement``: per-layer importance, the chosen layout, the candidates compared.

One self-contained HTML file (plotly.js inlined): a bar chart of each layer's KL to the model when that layer alone
becomes linear, with its recall drop on a second axis and the chosen attention layers marked; the chosen layout's
layer diagram (`hyla.analysis.report.layer_diagram`); a table of the searched, uniform and importance-top-K
placements by their inherited scores; the beam search's steps; the recipe.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from hyla.analysis.report import PAGE_CSS, layer_diagram
from hyla.space.layout import Layout, letter_legend


def importance_figure(record: dict[str, Any]) -> Any:
    """Per-layer KL (bars, chosen layers in red) and recall drop (line, right axis)."""
    import plotly.graph_objects as go

    layers = [r["layer"] for r in record["importance"]]
    chosen = set(record["attention"])
    fig = go.Figure()
    fig.add_bar(x=layers, y=[r["kl"] for r in record["importance"]], name="KL to the model (layer linear)",
                marker_color=["#d62728" if i in chosen else "#7f7f7f" for i in layers],
                hovertemplate="layer %{x}: KL %{y:.4g}<extra></extra>")
    fig.add_scatter(x=layers, y=[r["recall_drop"] for r in record["importance"]], yaxis="y2", mode="lines+markers",
                    name="recall drop", hovertemplate="layer %{x}: recall drop %{y:.3f}<extra></extra>")
    fig.update_layout(title="Per-layer importance (red: attention kept by the search)", xaxis_title="layer",
                      yaxis_title="KL (nats / token)", yaxis2={"title": "recall drop", "overlaying": "y",
                                                               "side": "right"},
                      legend={"orientation": "h", "y": -0.2}, height=420)
    return fig


def _candidates(record: dict[str, Any]) -> str:
    rows = []
    for name, c in record["candidates"].items():
        s = c["scores"]
        rows.append(f"<tr><td class=l>{html.escape(name)}</td><td class=l>{c['attention']}</td>"
                    f"<td>{s['recall']:.3f}</td><td>{s['kl_to_teacher']:.4f}</td><td>{s['lm_val_loss']:.4f}</td></tr>")
    return ("<table><tr><th class=l>placement</th><th class=l>attention layers</th><th>recall</th><th>KL</th>"
            "<th>LM loss</th></tr>" + "".join(rows) + "</table>")


def _trace(record: dict[str, Any]) -> str:
    rows = []
    for step, beam in enumerate(record["trace"]):
        for rank, c in enumerate(beam):
            rows.append(f"<tr><td>{step + 1}</td><td>{rank + 1}</td><td class=l>{c['attention']}</td>"
                        f"<td>{c['recall']:.3f}</td><td>{c['kl_to_teacher']:.4f}</td></tr>")
    return ("<table><tr><th>step</th><th>rank</th><th class=l>attention layers</th><th>recall</th><th>KL</th></tr>"
            + "".join(rows) + "</table>")


def render_placement_report(record: dict[str, Any], layout: Layout) -> str:
    """The page as one HTML string."""
    fig = importance_figure(record).to_html(full_html=False, include_plotlyjs=True, default_width="100%")
    req = record["request"]
    title = html.escape(f"hyla placement: {req['attention_layers']} attention layers of {record['model']}")
    s1 = record["stage1_error"]
    note = (f"Scores are inherited from the placement supernet (stage 1 {req['transfer_steps']} steps, supernet "
            f"{req['supernet_steps']} steps; held-out levels {html.escape(req['levels'])}, "
            f"{req['eval_examples']} examples each). Stage-1 relative error per layer, mean: "
            f"{sum(s1['before']) / len(s1['before']):.3f} before, {sum(s1['after']) / len(s1['after']):.3f} after.")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title><style>{PAGE_CSS}</style></head><body>
<h1>{title}</h1><p>{note}</p>
<h2>Chosen layout</h2><div class="diagram">{layer_diagram(layout)}</div>
<p><code>{html.escape(layout.layer_string(group=6))}</code> — {html.escape(letter_legend([layout.layer_string()]))}</p>
<h2>Per-layer importance</h2>{fig}
<h2>Placements compared</h2>{_candidates(record)}
<h2>Beam search</h2>{_trace(record)}
<h2>Recipe</h2><pre>{html.escape(json.dumps({k: record[k] for k in ("request", "model_key", "supernet")},
                                               indent=1, default=str))}</pre>
</body></html>
"""


def write_placement_report(record: dict[str, Any], layout: Layout, path: str | Path) -> Path:
    """Write the report page to ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_placement_report(record, layout), encoding="utf-8")
    return p
