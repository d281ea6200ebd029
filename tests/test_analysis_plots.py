"""Pareto figures and the report: trace contents, HTML that really renders in Chromium, PNG via kaleido."""

from __future__ import annotations

from pathlib import Path

import pytest

from browser import chromium, dump_doms
from hyla.analysis.plots import pareto_figure, write_html, write_png
from hyla.analysis.report import layer_diagram, render_report, write_report
from hyla.analysis.study_data import load_study
from hyla.config import ConfigError
from test_analysis_fixtures import LAYOUTS, build_study, tiny_layout

NO_CHROMIUM = "no chromium binary (apt-get install chromium); the lead's .ci/run installs it"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return load_study(build_study(tmp_path_factory.mktemp("study")))


def _by_name(fig, rung: int) -> dict[str, object]:
    return {t.name.replace(f" (rung {rung})", ""): t for t in fig.data if t.name.endswith(f"(rung {rung})")
            or t.name in ("dominated", "infeasible (constraint)", "paper grid")}


def test_figure_traces_split_front_dominated_infeasible_presets(study) -> None:
    fig = pareto_figure(study, axes=("memory_bytes", "recall"), rungs=[0])
    names = [t.name for t in fig.data]
    assert names == ["Pareto front (rung 0)", "dominated", "infeasible (constraint)", "paper grid"]
    front, dominated, infeasible, presets = fig.data
    done = [t for t in study.select(rung=0) if t.complete]
    # every complete trial is drawn exactly once, except presets on the front (front marker + labelled diamond)
    assert len(infeasible.x) == 1 and "TTTT" in infeasible.hovertext[0]
    assert infeasible.marker.symbol == "x"
    assert sorted(presets.text) == ["gla-3:1@test", "gla-pure@test", "transformer@test"]
    assert dominated.marker.opacity < 1
    assert len(front.x) + len(dominated.x) + len(infeasible.x) + len([p for p in presets.hovertext
                                                                        if p not in front.hovertext]) == len(done)
    # the front is non-dominated: sorted by memory, recall strictly increases along it
    assert list(front.x) == sorted(front.x)
    assert all(b > a for a, b in zip(front.y, front.y[1:]))
    assert "1 failed trial not shown" in fig.layout.title.text
    assert "trial" in front.hovertext[0] and "lm_loss" in front.hovertext[0]


def test_figure_three_metrics_and_rung_dropdown(study) -> None:
    fig = pareto_figure(study, axes=("lm_loss", "recall", "memory_bytes"))
    assert fig.data[0].type == "scatter3d"
    menu = fig.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == ["rung 1", "rung 0"]  # highest rung first
    assert sum(menu.buttons[1].args[0]["visible"]) == 4
    with pytest.raises(ConfigError, match="pareto axis: 'speed'"):
        pareto_figure(study, axes=("memory_bytes", "speed"))
    with pytest.raises(ConfigError, match="--rung: 5"):
        pareto_figure(study, rungs=[5])
    with pytest.raises(ConfigError, match="2 or 3 distinct"):
        pareto_figure(study, axes=("recall",))


def test_layer_diagram_splits_headwise_layers() -> None:
    svg = layer_diagram(tiny_layout(["gla", "gla+a1@64", "attn"]))
    assert svg.count("<rect") == 1 + 2 + 1  # head-wise layer: one cell per head (num_heads = 2)
    assert svg.count("#d62728") == 2  # one softmax head + one attention layer
    assert "stroke-dasharray" in svg  # the window mark


def test_report_contents(study) -> None:
    page = render_report(study)
    assert page.count("<script type=\"text/javascript\">/**\n* plotly.js") <= 1  # plotly inlined once
    assert 'class="sortable"' in page and "addEventListener('click'" in page
    assert page.count("<tr class=") == len(LAYOUTS) + 1 + 3
    assert "diverged: loss is nan" in page and "1 failed trial(s) by cause" in page
    for how in ("knee", "best-recall", "min-kv", "best-loss"):
        assert f"<b>{how}</b>: trial" in page
    assert "space_key" not in page and "objectives:" in page


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_html_renders_in_chromium(study, tmp_path: Path) -> None:
    fig = pareto_figure(study)
    path = write_html(fig, tmp_path / "front.html")
    report = write_report(study, tmp_path / "report.html")
    dom, report_dom = dump_doms([path, report])
    assert 'class="main-svg"' in dom
    # plotly drew one marker per point of the visible rung (hidden rungs draw nothing)
    assert dom.count('class="point"') == sum(len(t.x) for t in fig.data if t.visible) > 0
    assert report_dom.count('class="main-svg"') >= 3 and 'class="point"' in report_dom
    assert "<svg class=\"layers\"" in report_dom


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_png_export(study, tmp_path: Path) -> None:
    path = write_png(pareto_figure(study, rungs=[0]), tmp_path / "front.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_png_without_browser_is_a_clear_error(study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hyla.analysis.plots as plots

    monkeypatch.setattr(plots, "find_browser", lambda: None)
    with pytest.raises(ConfigError, match="PNG export needs a Chrome/Chromium"):
        write_png(pareto_figure(study), tmp_path / "x.png")
