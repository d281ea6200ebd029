"""Neighbour tests along a front (analysis/significance.py): Welch's test, the interval verdict, edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy import stats

from hyla.analysis.significance import front_pair_tests, interval_verdict, welch_test
from hyla.analysis.study_data import load_study
from hyla.config import ConfigError
from study_fixtures import build_noise_study, build_study


def test_welch_test_verdicts() -> None:
    a, b = [0.60, 0.62, 0.61], [0.60, 0.66, 0.63]
    p, verdict = welch_test(a, b)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue) and p > 0.05
    assert verdict == f"not significant (p={p:.2g})"
    p, verdict = welch_test([0.20, 0.22, 0.21], a)
    assert p < 1e-4 and verdict.startswith("significant")
    assert welch_test([0.5], a) == (None, "n/a (1 seed)")
    assert welch_test([0.5, 0.5], [0.5, 0.5]) == (None, "n/a (no variance)")
    # alpha decides: the same p is significant at 0.5
    assert welch_test(a, b, alpha=0.5)[1].startswith("significant")


def test_interval_verdict() -> None:
    assert interval_verdict(0.0, 0.1, 0.5, 0.1) == "separated at ±2 s.e.m."
    assert interval_verdict(0.0, 0.1, 0.4, 0.1) == "overlapping at ±2 s.e.m."  # touching is overlapping
    assert interval_verdict(0.0, 0.1, 0.4, 0.1, z=1.0) == "separated at ±1 s.e.m."
    assert interval_verdict(0.0, None, 0.4, 0.1) == "n/a (no s.e.m.)"
    assert interval_verdict(1.0, 0.0, 1.0, 0.0) == "overlapping at ±2 s.e.m."


def test_front_pair_tests(tmp_path: Path) -> None:
    data = load_study(build_noise_study(tmp_path / "n"))
    tests = front_pair_tests(data, 0)
    assert [(t.a.number, t.b.number, t.metric) for t in tests] == [
        (a, a + 1, m) for a in range(3) for m in ("recall", "lm_loss")]
    assert [t.significant for t in tests] == [True, False, False, True, True, True]
    assert all(t.a.metric("memory_bytes") < t.b.metric("memory_bytes") for t in tests)
    assert tests[0].diff == pytest.approx(0.40)
    assert [t.significant for t in front_pair_tests(data, 1)] == [None, None]
    # a study written before seeds: every pair is n/a, nothing raises
    old = load_study(build_study(tmp_path / "old"))
    assert {t.verdict for t in front_pair_tests(old, 0)} == {"n/a (1 seed)"}
    with pytest.raises(ConfigError, match="--rung: 4"):
        front_pair_tests(data, 4)
    with pytest.raises(ConfigError, match="alpha: 1.5"):
        front_pair_tests(data, 0, alpha=1.5)
