"""Fidelity v2 checks (``analysis/fidelity_v2.py``) on synthetic records: each check passes on a family built to
pass it and fails on one built to fail it; the count-attn pseudo-family; the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hyla.analysis.fidelity_v2 import COUNT_ATTN, analyze, count_attention_records, family_checks, format_report, read_records
from conftest import REPO

QUALITY = {"gdn": 0.9, "hgrn2": 0.85, "deltanet": 0.6, "gla": 0.5, "retnet": 0.2, "hgrn": 0.1}
RATIOS = {"pure": 0, "24:1": 1, "12:1": 2, "6:1": 4, "3:1": 8}


def _layouts() -> list[tuple[str, str, int]]:
    out = [("transformer", "transformer", 24)]
    for m in ("gla", "gdn", "hgrn2", "deltanet"):
        out += [(f"{m}-{r}", m, n) for r, n in RATIOS.items()]
    out += [(f"{m}-{r}", m, RATIOS[r]) for m in ("retnet", "hgrn") for r in ("pure", "6:1")]
    return out


def _good(name: str, mixer: str, n_attn: int, budget: int = 1) -> float:
    q = QUALITY.get(mixer, 1.0)
    return 1 - (1 - q) * math.exp(-n_attn / 4)


def _records(score=_good, budgets=(1, 4), seeds=(0, 1, 2), noise=0.003, proxy="fam", machine=None,
             wall=10.0) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for b in budgets:
        for s in seeds:
            for name, mixer, n in _layouts():
                value = score(name, mixer, n, b)
                out.append({"proxy": proxy, "layout_name": name, "mixer": mixer, "n_attn": n, "n_layers": 24,
                            "seed": s, "budget": b, "status": "ok", "recall": value + rng.normal(0, noise),
                            "floor": 0.1, "levels": {}, "wall_s": wall, "shared": {"teacher:x": 100.0},
                            "machine": machine or {"device": "cpu"}})
    return out


def test_a_family_built_to_pass_passes_everything() -> None:
    a = family_checks(_records(machine={"device": "cuda", "gpu": "NVIDIA H100"}))
    c = a["budgets"][1]
    assert c["reproducible"]["pass"] and c["reproducible"]["value"] > 0.95
    assert c["graded"]["pass"] and c["graded"]["at_floor"] == ["hgrn-pure"] and not c["graded"]["pure_ties"]
    assert c["on_trend"]["pass"] and c["on_trend"]["every_pure_below"]
    assert c["findings"]["pass"] and c["findings"]["n_hybrids"] == 18
    assert a["consistent"]["pass"] and a["consistent"]["budgets"] == [1, 4]
    # 25 layouts x 3 seeds x 10 s + the shared teacher once; on a GPU the target is 15 min
    assert a["fast"]["seconds"] == pytest.approx(750 + 100) and a["fast"]["pass"]


def test_each_check_fails_on_a_family_built_to_fail_it() -> None:
    rng = np.random.default_rng(1)
    noisy = family_checks(_records(lambda n, m, k, b: float(rng.random())))
    assert noisy["budgets"][1]["reproducible"]["pass"] is False

    def flat(name: str, mixer: str, n: int, budget: int) -> float:  # most layouts on the plateau, pure layouts tie
        return 0.1 if n < 4 else 0.9
    g = family_checks(_records(flat))["budgets"][1]["graded"]
    assert g["pass"] is False and g["floor_share"] > 0.2 and len(g["pure_ties"]) == 15

    def reversed_trend(name: str, mixer: str, n: int, budget: int) -> float:
        return 1 - _good(name, mixer, n) + 0.1
    t = family_checks(_records(reversed_trend))["budgets"][1]["on_trend"]
    assert t["pass"] is False and t["value"] < 0 and t["every_pure_below"] is False

    def retnet_best(name: str, mixer: str, n: int, budget: int) -> float:
        return _good(name, mixer, n) + (0.5 if mixer == "retnet" and n else 0.0)
    f = family_checks(_records(retnet_best))["budgets"][1]["findings"]
    assert f["pass"] is False and f["bottom_third"]["layouts"]["retnet-6:1"] is False
    assert f["top_third"]["pass"] is True and f["bottom_third"]["layouts"]["hgrn-6:1"] is True

    def flips(name: str, mixer: str, n: int, budget: int) -> float:
        return _good(name, mixer, n) if budget == 1 else 1 - _good(name, mixer, n)
    assert family_checks(_records(flips))["consistent"]["pass"] is False

    slow = family_checks(_records(machine={"device": "cuda", "gpu": "NVIDIA H100"}, wall=20.0))
    assert slow["fast"]["seconds"] == pytest.approx(1600) and slow["fast"]["pass"] is False
    assert family_checks(_records())["fast"]["pass"] is None  # no target on a CPU


def test_count_attention_pseudo_family() -> None:
    recs = _records()
    ca = count_attention_records(recs)
    assert len(ca) == len(recs) and {r["proxy"] for r in ca} == {COUNT_ATTN}
    assert {r["recall"] for r in ca if r["layout_name"] == "gla-6:1"} == {4.0}
    a = family_checks(ca)
    c = a["budgets"][1]
    assert c["reproducible"]["value"] == pytest.approx(1.0) and a["consistent"]["value"] == pytest.approx(1.0)
    assert c["graded"]["pass"] is False and len(c["graded"]["at_floor"]) == 6  # the pure layouts, all tied
    assert c["on_trend"]["value"] == pytest.approx(1.0) and c["on_trend"]["pass"]


def test_analyze_file_and_report(tmp_path) -> None:
    path = tmp_path / "fidelity_v2_test.jsonl"
    recs = _records(proxy="capacity") + _records(proxy="probe", budgets=(1,)) + [
        {"proxy": "probe", "status": "failed", "layout_name": "x", "seed": 0, "budget": 1}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn')
    a = analyze(read_records(path))
    assert set(a) == {"capacity", "probe", COUNT_ATTN} and a["probe"]["n_failed"] == 1
    assert a["probe"]["consistent"]["value"] is None  # one budget: nothing to compare
    text = format_report(a)
    for needle in ("== capacity", "== probe", f"== {COUNT_ATTN}", "reproducible  PASS", "graded        FAIL",
                   "transformer", "consistent    n/a"):
        assert needle in text, needle


def test_bench_fidelity_analyze_file(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "fidelity_v2_x.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(proxy="capacity")))
    bench = REPO / "benchmarks" / "bench_fidelity.py"
    proc = subprocess.run([sys.executable, str(bench), "--analyze", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "capacity               PASS" in proc.stdout and "== count-attn" in proc.stdout
    assert json.loads((tmp_path / "fidelity_v2_x.analysis.json").read_text())["capacity"]["consistent"]["pass"]
    missing = subprocess.run([sys.executable, str(bench), "--analyze", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "file not found" in missing.stderr
