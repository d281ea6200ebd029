"""Pareto math on hand-made points, the knee, and the named picks on a real journal study."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyla.analysis.pareto import dominates, knee_index, non_dominated, pick, pick_description
from hyla.analysis.study_data import load_study
from hyla.config import ConfigError
from study_fixtures import LAYOUTS, build_study

MIN2 = ["minimize", "minimize"]


def test_dominates_respects_directions() -> None:
    assert dominates([1, 1], [2, 2], MIN2)
    assert not dominates([1, 1], [1, 1], MIN2)  # equal points do not dominate each other
    assert not dominates([1, 3], [2, 2], MIN2)
    assert dominates([1, 3], [2, 2], ["minimize", "maximize"])
    with pytest.raises(ConfigError, match="direction: 'up'"):
        dominates([1], [2], ["up"])


def test_non_dominated_hand_made() -> None:
    pts = [[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [5, 5]]
    assert non_dominated(pts, MIN2) == [0, 1, 3, 4]
    # maximising the second objective flips the picture: (5,5) and (1,5) tie on y; (1,5) wins on x
    assert non_dominated(pts, ["minimize", "maximize"]) == [0]
    assert non_dominated([[1, 2, 3], [3, 2, 1], [2, 2, 2], [3, 3, 3]], ["minimize"] * 3) == [0, 1, 2]


def test_knee_utopia_and_line() -> None:
    # a convex front: the elbow (2, 2) is both nearest to utopia and farthest from the extremes' line
    pts = [[0, 10], [1, 5], [2, 2], [5, 1], [10, 0], [6, 6]]
    assert knee_index(pts, MIN2) == 2
    assert knee_index(pts, MIN2, method="line") == 2
    # the knee is found among front points only, also when maximising
    pts_max = [[0, -10], [2, -2], [10, 0], [9, -9]]
    assert knee_index(pts_max, ["minimize", "maximize"]) == 1
    assert knee_index([[3, 3]], MIN2) == 0
    with pytest.raises(ConfigError, match="knee method"):
        knee_index(pts, MIN2, method="magic")


def test_knee_is_unit_invariant() -> None:
    pts = [[0, 10], [1, 5], [2, 2], [5, 1], [10, 0]]
    scaled = [[x * 1e9, y] for x, y in pts]  # bytes vs loss scales must not matter
    assert knee_index(scaled, MIN2) == knee_index(pts, MIN2)


@pytest.mark.parametrize("mode", ["studies", "attr"])
def test_load_study_and_picks(tmp_path: Path, mode: str) -> None:
    journal = build_study(tmp_path, rung_mode=mode)
    data = load_study(journal)
    assert data.name == "toy" and data.rungs == [0, 1]
    rung0 = data.select(rung=0)
    assert len(rung0) == len(LAYOUTS) + 1
    failed = [t for t in rung0 if t.state == "FAIL"]
    assert len(failed) == 1 and "nan" in (failed[0].fail_reason or "")
    assert [t.feasible for t in rung0 if t.layout_string == "TTTT"] == [False]
    presets = {t.preset for t in rung0 if t.preset}
    assert presets == {"gla-pure@test", "gla-3:1@test", "transformer@test"}
    for t in data.select(rung=1):
        assert t.parent is not None and data.select(rung=0)[t.parent].layout_key == t.layout_key
    assert data.top_rung() == 1
    # loading through the run directory gives the same trials
    assert load_study(journal.parent).trials == data.trials

    best = pick(data, "best-recall", rung=0)
    done = [t for t in rung0 if t.complete and t.feasible]
    assert best.metric("recall") == max(t.metric("recall") for t in done)
    assert best.layout_string == "AAAA"
    low_kv = pick(data, "min-kv", rung=0)
    assert low_kv.metric("kv_bytes") == 0  # a pure linear layout has no KV cache
    assert pick(data, "best-loss", rung=0).metric("lm_loss") == min(t.metric("lm_loss") for t in done)
    knee = pick(data, "knee", rung=0)
    assert knee.complete and knee.feasible
    with pytest.raises(ConfigError, match="--pick: 'fast'"):
        pick(data, "fast")
    with pytest.raises(ConfigError, match="--rung: 7"):
        pick(data, "knee", rung=7)


def test_pick_descriptions_name_the_front_or_metric(tmp_path: Path) -> None:
    data = load_study(build_study(tmp_path))
    assert pick_description(data, "knee") == "knee of the 3-objective front (lm_loss, recall, memory_bytes)"
    assert pick_description(data, "knee", ["memory_bytes", "recall"]) == \
        "knee of the 2-objective front (memory_bytes, recall)"
    assert pick_description(data, "best-recall") == "highest recall (ties: lower memory_bytes)"
    assert pick_description(data, "min-kv") == "lowest kv_bytes (ties: higher recall)"
    with pytest.raises(ConfigError, match="--pick: 'fastest' is not allowed"):
        pick_description(data, "fastest")


def test_load_study_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file or directory; expected a study YAML"):
        load_study(tmp_path / "missing.journal")
    with pytest.raises(ConfigError, match="no study.journal"):
        load_study(tmp_path)
    journal = build_study(tmp_path)
    with pytest.raises(ConfigError, match="study 'other': not in"):
        load_study(journal, "other")


def test_load_study_from_sqlite_url(tmp_path: Path) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    journal = build_study(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    src = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    for name in optuna.get_all_study_names(src):
        optuna.copy_study(from_study_name=name, from_storage=src, to_storage=url)
    a, b = load_study(journal), load_study(url)
    assert [(t.rung, t.number, t.state, t.values, t.layout_key, t.feasible, t.parent) for t in a.trials] == \
           [(t.rung, t.number, t.state, t.values, t.layout_key, t.feasible, t.parent) for t in b.trials]
    assert b.objectives == a.objectives and b.config == a.config
    with pytest.raises(ConfigError, match="SQLite file .* not found"):
        load_study(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()
