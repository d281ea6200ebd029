"""Pareto figures and the report: trace contents, HTML that really renders in Chromium, PNG via kaleido."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from browser import NO_CHROMIUM, chromium, dump_doms
from hyla.analysis.plots import pareto_figure, write_html, write_png
from hyla.analysis.report import layer_diagram, render_report, write_report
from hyla.analysis.study_data import load_study
from hyla.config import ConfigError
from hyla.space.mixer_kinds import get_mixer_kind
from study_fixtures import LAYOUTS, NOISE_ROWS, build_noise_study, build_study, tiny_layout


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return load_study(build_study(tmp_path_factory.mktemp("study")))


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory):
    return load_study(build_noise_study(tmp_path_factory.mktemp("noisy")))


def _by_name(fig, rung: int) -> dict[str, object]:
    return {t.name.replace(f" (rung {rung})", ""): t for t in fig.data if t.name.endswith(f"(rung {rung})")
            or t.name in ("dominated", "infeasible (constraint)", "paper grid")}


def test_figure_traces_split_front_dominated_infeasible_presets(study) -> None:
    fig = pareto_figure(study, axes=("memory_bytes", "recall"), rungs=[0])
    names = [t.name for t in fig.data]
    assert names == ["Pareto front (rung 0)", "dominated", "infeasible (constraint)", "paper grid",
                     "export --pick knee: knee of the 3-objective front (lm_loss, recall, memory_bytes)"]
    front, dominated, infeasible, presets, _knee = fig.data
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
    assert sum(menu.buttons[1].args[0]["visible"]) == 5  # front, dominated, infeasible, presets, knee
    with pytest.raises(ConfigError, match="pareto axis: 'speed'"):
        pareto_figure(study, axes=("memory_bytes", "speed"))
    with pytest.raises(ConfigError, match="--rung: 5"):
        pareto_figure(study, rungs=[5])
    with pytest.raises(ConfigError, match="2 or 3 distinct"):
        pareto_figure(study, axes=("recall",))


def test_knee_star_says_which_front_it_is_the_knee_of(study) -> None:
    from hyla.analysis.pareto import pick

    desc = "knee of the 3-objective front (lm_loss, recall, memory_bytes)"
    knee = pick(study, "knee", rung=0)
    # a 2-metric view in which the fixture's knee (22AA; noise-aware, scaled by rung 0) is dominated
    fig = pareto_figure(study, axes=("lm_loss", "recall"), rungs=[0])
    dominated, star = fig.data[1], fig.data[-1]
    assert star.name == f"export --pick knee: {desc}" and star.marker.symbol == "star"
    assert (star.x[0], star.y[0]) == (knee.metric("lm_loss"), knee.metric("recall"))
    # the exported knee is dominated in this 2-D view; the figure says why instead of leaving it unexplained
    assert star.hovertext[0] in {h + f"<br><i>export --pick knee --rung 0: {desc}; dominated in this 2-metric "
                                        "view only</i>" for h in dominated.hovertext}
    assert f"orange ★ = export --pick knee: the {desc}, so it can look dominated here" in fig.layout.title.text
    # in the view of all three objectives the knee lies on the front and no caveat is needed
    fig3 = pareto_figure(study, axes=("lm_loss", "recall", "memory_bytes"), rungs=[0])
    assert fig3.data[-1].name == f"export --pick knee: {desc}" and "also on this view's front" in fig3.data[-1].hovertext[0]
    assert "export --pick knee" not in fig3.layout.title.text
    assert f"{desc}:" in render_report(study)  # the report's best-layout list says it too


def test_layer_diagram_splits_headwise_layers() -> None:
    svg = layer_diagram(tiny_layout(["gla", "gla+a1@64", "attn"]))
    assert svg.count("<rect") == 1 + 2 + 1  # head-wise layer: one cell per head (num_heads = 2)
    assert svg.count("#d62728") == 2  # one softmax head + one attention layer
    assert svg.count(get_mixer_kind("gla").color) == 2  # the gla layer + the linear head (colour of its MixerKind)
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
    assert "GgGg" in page and "g gla + softmax heads (head-wise)" in page  # the trial table's letter legend


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


def test_seeded_study_draws_error_bars(noisy) -> None:
    fig = pareto_figure(noisy, axes=("memory_bytes", "recall"), rungs=[0])
    front, dominated = fig.data[0], fig.data[1]
    recs = {r.layout_string: r for r in noisy.select(rung=0)}
    assert len(front.error_y.array) == len(front.x) == 4
    # bars are +-2 s.e.m. of each point's recall; memory is exact, so no horizontal bars
    want = [2 * recs[h.split("</b>")[0].removeprefix("<b>")].sem("recall") for h in front.hovertext]
    assert list(front.error_y.array) == pytest.approx(want) and all(b > 0 for b in want)
    assert front.error_y.visible and front.error_x.array is None
    # the single-seed (old-style) dominated trial gets a zero-length bar, the 3-seed one a real bar
    assert sorted(dominated.error_y.array) == [0.0, pytest.approx(2 * 0.01 / 3 ** 0.5)]
    assert "error bars: ±2 s.e.m. over 3 seeds" in fig.layout.title.text
    assert any("recall: 0.21 ± 0.0058 (3 seeds)" in h for h in front.hovertext)
    assert all("memory_bytes: " in h and "memory_bytes: 8192 ±" not in h for h in front.hovertext)
    # rung 1 has one seed per trial: no bars and no note; z=3 widens the bars; a bad z is refused
    one = pareto_figure(noisy, axes=("memory_bytes", "recall"), rungs=[1])
    assert one.data[0].error_y.array is None and "error bars" not in one.layout.title.text
    wide = pareto_figure(noisy, axes=("memory_bytes", "recall"), rungs=[0], z=3.0)
    assert list(wide.data[0].error_y.array) == pytest.approx([1.5 * b for b in front.error_y.array])
    assert "±3 s.e.m." in wide.layout.title.text
    with pytest.raises(ConfigError, match="pareto z: -1"):
        pareto_figure(noisy, z=-1)
    fig3 = pareto_figure(noisy, axes=("lm_loss", "recall", "memory_bytes"), rungs=[0])
    assert len(fig3.data[0].error_x.array) == 4 and len(fig3.data[0].error_y.array) == 4  # loss and recall


def _noise_rows(page: str, rung: int) -> list[list[str]]:
    table = re.search(rf'<table class="noise" id="noise-rung{rung}">(.*?)</table>', page, re.DOTALL)
    assert table is not None, f"no noise table for rung {rung}"
    body = table.group(1).split("<tbody>")[1]
    return [[re.sub("<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_report_significance_section(noisy) -> None:
    page = render_report(noisy)
    assert "<h2>Seed noise along the fronts</h2>" in page
    rows = {(r[0], r[2]): r for r in _noise_rows(page, 0)}
    # front sorted by memory: trials 0 -> 1 -> 2 -> 3 (4 and 5 are dominated), two metrics per pair
    assert sorted(rows) == sorted((f"{a} → {a + 1}", m) for a in range(3) for m in ("recall", "lm_loss"))
    welch = {k: r[6] for k, r in rows.items()}
    assert welch[("0 → 1", "recall")].startswith("significant (p=")  # 0.21 -> 0.61, sd 0.01
    assert welch[("0 → 1", "lm_loss")].startswith("not significant (p=")  # 3.11 vs 3.11
    assert welch[("1 → 2", "recall")].startswith("not significant (p=")  # 0.61 vs 0.63, sd 0.01 / 0.03
    assert welch[("1 → 2", "lm_loss")].startswith("significant")
    assert rows[("1 → 2", "recall")][7] == "overlapping at ±2 s.e.m."
    assert rows[("1 → 2", "lm_loss")][7] == "separated at ±2 s.e.m."
    assert rows[("0 → 1", "recall")][3] == "0.21 ± 0.0058" and rows[("0 → 1", "recall")][5] == "+0.4"
    # rung 1: single-seed trials cannot be tested
    assert {r[6] for r in _noise_rows(page, 1)} == {"n/a (1 seed)"}
    assert {r[7] for r in _noise_rows(page, 1)} == {"n/a (no s.e.m.)"}
    # the trial table: a seeds column and mean ± sem cells
    trials = page.split('id="trials"')[1]
    assert "<th class=\"\">seeds</th>" in trials and "0.21 ± 0.0058" in trials
    assert trials.count("<td>3</td>") >= len(NOISE_ROWS) - 1


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_error_bars_render_in_chromium(noisy, tmp_path: Path) -> None:
    fig = pareto_figure(noisy, axes=("memory_bytes", "recall"), rungs=[0])
    dom, report_dom = dump_doms([write_html(fig, tmp_path / "noisy.html"), write_report(noisy, tmp_path / "r.html")])
    bars = sum(len(t.error_y.array) for t in fig.data if t.error_y.array is not None)
    assert bars == 6 and dom.count('class="yerror"') == bars  # one vertical bar per point of the traces with bars
    assert 'class="xerror"' not in dom
    assert "±2 s.e.m. over 3 seeds" in dom  # the title note is drawn
    # the report shows the highest rung (single seed) first; rung 0's bars are in its figure data
    assert 'id="noise-rung0"' in report_dom and 'class="main-svg"' in report_dom and '"error_y"' in report_dom
