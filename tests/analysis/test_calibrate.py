"""Calibration against a reference CSV written here, and the `hyla analysis` CLI (including bad input -> exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scipy.stats import kendalltau, spearmanr

from hyla.analysis.calibrate import calibrate, pattern_key, write_calibration
from hyla.analysis.study_data import load_study
from hyla.cli import main
from hyla.config import ConfigError
from study_fixtures import LAYOUTS, build_study, tiny_layout


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_study(tmp_path_factory.mktemp("study"))


def _reference(tmp_path: Path, journal: Path, rows: int, scale_up: bool = True) -> tuple[Path, dict[str, float]]:
    """A CSV whose layouts are YAML files at a larger width (like a full-scale run) with a monotone recall."""
    data = load_study(journal)
    lines, proxy = ["layout,recall,lm_loss"], {}
    for i, (layers, _) in enumerate(LAYOUTS[:rows]):
        lay = tiny_layout(layers)
        if scale_up:
            lay = lay.__class__.from_dict({**lay.to_dict(), "d_model": 64, "mlp_hidden": 128})
        lay.dump(tmp_path / f"l{i}.yaml")
        t = next(t for t in data.select(rung=0, complete=True) if pattern_key(t.layout) == pattern_key(lay))
        proxy[f"l{i}"] = t.metric("recall")
        # reference recall: a monotone transform of proxy recall (rank agreement 1); lm_loss: unrelated ranks
        ref = 0.5 * t.metric("recall") + 0.2
        lines.append(f"l{i}.yaml,{ref},{'' if i == 0 else 2.5 + 0.01 * i}")
    lines.append("gla-pure@tiny,0.1,3.0")  # a 24-layer preset: matches no 4-layer trial, ignored
    csv = tmp_path / "ref.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv, proxy


def test_calibrate_matches_by_layer_pattern(journal: Path, tmp_path: Path) -> None:
    csv, proxy = _reference(tmp_path, journal, rows=6)
    data = load_study(journal)
    rung, results = calibrate(data, csv)
    assert rung == 0  # only rung 0 holds all six layouts
    recall, loss = results
    assert recall.metric == "recall" and recall.n == 6 and loss.n == 5  # blank lm_loss cell skipped
    assert recall.spearman == pytest.approx(1.0) and recall.kendall == pytest.approx(1.0)
    assert recall.spearman_ci[0] <= recall.spearman <= recall.spearman_ci[1]
    x = [p["proxy"] for p in loss.pairs]
    y = [p["reference"] for p in loss.pairs]
    assert loss.spearman == pytest.approx(spearmanr(x, y)[0]) and loss.kendall == pytest.approx(kendalltau(x, y)[0])
    assert -1.0 <= loss.spearman_ci[0] <= loss.spearman_ci[1] <= 1.0
    again = calibrate(data, csv)[1][1]
    assert again.spearman_ci == loss.spearman_ci  # seeded bootstrap
    files = write_calibration(data, rung, results, tmp_path / "out")
    saved = json.loads(files[0].read_text())
    assert saved["metrics"][0]["n"] == 6 and files[1].stat().st_size > 1_000_000  # plotly inlined


def test_vectorised_rank_stats_equal_scipy() -> None:
    import numpy as np

    from hyla.analysis.calibrate import _kendall_rows, _spearman_rows, bootstrap_ci

    rng = np.random.default_rng(1)
    x = rng.integers(0, 4, size=(20, 7)).astype(float)  # many ties
    y = rng.normal(size=(20, 7))
    y[:, 0] = y[:, 1]
    for row_x, row_y, rho, tau in zip(x, y, _spearman_rows(x, y), _kendall_rows(x, y)):
        if np.ptp(row_x) == 0:
            continue
        assert rho == pytest.approx(spearmanr(row_x, row_y)[0])
        assert tau == pytest.approx(kendalltau(row_x, row_y)[0])
    lo, hi = bootstrap_ci(list(y[0]), list(y[0] * 2 + 1), "kendall")
    assert lo == hi == pytest.approx(1.0)  # a monotone relation stays perfect in every resample


def test_spearman_of_two_lists() -> None:
    from hyla.analysis.calibrate import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None and spearman([1, 2], [1, 2]) is None
    # ties get average ranks: x ranks [1.5, 1.5, 3], y ranks [1, 2, 3] -> rho = sqrt(3)/2
    assert spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(3 ** 0.5 / 2)
    assert spearman([0.1, 0.5, 0.2, 0.9, 0.4], [3, 1, 4, 1, 5]) == pytest.approx(
        spearmanr([0.1, 0.5, 0.2, 0.9, 0.4], [3, 1, 4, 1, 5])[0])


def test_calibrate_needs_three_matches(journal: Path, tmp_path: Path) -> None:
    csv, _ = _reference(tmp_path, journal, rows=2)
    with pytest.raises(ConfigError, match="only 2 layout"):
        calibrate(load_study(journal), csv)


def test_calibrate_bad_csv(journal: Path, tmp_path: Path) -> None:
    data = load_study(journal)
    bad = tmp_path / "bad.csv"
    bad.write_text("layout,speed\ngla-pure@tiny,1\n")
    with pytest.raises(ConfigError, match="column 'speed' is not a metric"):
        calibrate(data, bad)
    bad.write_text("name,recall\nx,1\n")
    with pytest.raises(ConfigError, match="missing column 'layout'"):
        calibrate(data, bad)
    bad.write_text("layout,recall\ngla-pure@tiny,high\n")
    with pytest.raises(ConfigError, match="line 2: recall='high' is not a number"):
        calibrate(data, bad)


def test_cli_end_to_end(journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analysis", "report", str(journal), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1_000_000
    assert main(["analysis", "pareto", str(journal.parent), "--x", "lm_loss", "--y", "recall", "--z",
                 "memory_bytes", "--rung", "0", "--out", str(tmp_path / "p.html")]) == 0
    assert main(["analysis", "export", str(journal), "--pick", "min-kv", "--out", str(tmp_path / "ex")]) == 0
    assert "GGGG" in capsys.readouterr().out and (tmp_path / "ex" / "layout.yaml").is_file()
    csv, _ = _reference(tmp_path, journal, rows=4)
    assert main(["analysis", "calibrate", str(journal), "--reference", str(csv), "--out", str(tmp_path / "c")]) == 0
    assert "Spearman" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["pareto", "{j}", "--x", "speed"], "pareto axis: 'speed'"),
    (["pareto", "{j}", "--out", "p.pdf"], "--out: 'p.pdf'"),
    (["pareto", "{j}", "--rung", "9"], "--rung: 9"),
    (["report", "/nonexistent/study.journal"], "not a storage URL"),
    (["export", "{j}", "--pick", "fastest", "--out", "x"], "--pick: 'fastest'"),
    (["export", "{j}", "--trial", "42", "--out", "x"], "--trial: 42"),
    (["export", "{j}", "--trial", "0", "--scale", "7b", "--out", "x"], "--scale: '7b'"),
    (["calibrate", "{j}", "--reference", "/nonexistent.csv"], "--reference"),
    (["report", "{j}", "--study", "nope"], "study 'nope': not in"),
])
def test_cli_bad_input_exits_2(journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analysis", *[a.replace("{j}", str(journal)) for a in argv]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hyla: error:") and message in err and "\n" not in err


def test_calibrate_rung_against_a_higher_rung(journal: Path) -> None:
    """Multi-fidelity consistency: rung 0's values of the promoted layouts against their rung-1 values."""
    data = load_study(journal)
    rung, results = calibrate(data, reference_rung=1)
    assert rung == 0
    promoted = data.select(rung=1, complete=True)
    recall = next(r for r in results if r.metric == "recall")
    assert recall.n == len(promoted) == 3
    by_layout = {pattern_key(t.layout): t for t in promoted}
    for pair in recall.pairs:
        t0 = next(t for t in data.select(rung=0, complete=True) if t.number in pair["trials"])
        assert pair["proxy"] == t0.metric("recall")
        assert pair["reference"] == by_layout[pattern_key(t0.layout)].metric("recall")
    x, y = [p["proxy"] for p in recall.pairs], [p["reference"] for p in recall.pairs]
    assert recall.spearman == pytest.approx(spearmanr(x, y)[0])
    with pytest.raises(ConfigError, match="exactly one of"):
        calibrate(data)
    with pytest.raises(ConfigError, match="--reference-rung: 5"):
        calibrate(data, reference_rung=5)
    with pytest.raises(ConfigError, match="reference rung itself"):
        calibrate(data, reference_rung=1, rung=1)


def test_calibrate_reports_the_paper_findings(journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a reference, `hyla analysis calibrate` reports the paper's four findings on a rung's trials (seed
    values, pooled per layout); with one, beside the rank agreement."""
    from hyla.analysis.findings import FINDINGS, paper_findings, study_records

    data = load_study(journal)
    records = study_records(data, 0)
    complete = data.select(rung=0, complete=True)
    assert {r["layout_name"] for r in records} == {t.layout_key for t in complete}
    assert len(records) == sum(len(t.seed_values("recall")) for t in complete)
    assert main(["analysis", "calibrate", str(journal), "--rung", "0", "--out", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "the paper's findings on rung 0" in out and "1. recall rises with attention share" in out
    saved = json.loads((tmp_path / "f" / "calibration.json").read_text())
    assert saved["metrics"] == [] and saved["paper_findings"] == json.loads(json.dumps(paper_findings(records)))
    assert set(FINDINGS) <= set(saved["paper_findings"]) and not (tmp_path / "f" / "calibration.html").exists()
    csv, _ = _reference(tmp_path, journal, rows=4)
    assert main(["analysis", "calibrate", str(journal), "--reference", str(csv), "--out", str(tmp_path / "c")]) == 0
    both = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert both["metrics"] and both["paper_findings"]["n_layouts"] == len({t.layout_key for t in complete})
