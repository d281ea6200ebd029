"""Noise-aware promotion (search/rungs.py): interval dominance, noise fronts, the promotion report."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from hyla.config import ConfigError
from hyla.search.rungs import (
    dominates, dominates_beyond_noise, knee_first, noise_front, noise_fronts, non_dominated_fronts,
    objective_sems, pareto_front, promotion_report, select_promoted,
)

from study_fixtures import tiny_layout

NAMES = ["lm_loss", "recall", "memory_bytes"]
DIRS = ["minimize", "maximize", "minimize"]


def _trial(number: int, values: list[float], sem: list[float | None] | None = None, key: str | None = None,
           violation: float = 0.0, n_seeds: int = 3) -> FrozenTrial:
    attrs = {"layout_key": key or f"L{number}", "n_seeds": n_seeds}
    if sem is not None:
        attrs["objective_sem"] = sem
    t = create_trial(values=values, user_attrs=attrs, system_attrs={"constraints:mem": violation},
                     state=TrialState.COMPLETE)
    t.number = number
    return t


def _scene() -> list[FrozenTrial]:
    """A and D on the exact front; B exactly dominated by A but only within noise; E dominated by D beyond noise.

    Exact fronts: [A, D], [E, B] (E and B trade off; with exact means both are 1 from the utopia point of the pair,
    so E wins on number).
    """
    s = [0.01, 0.01, 0.0]  # memory is deterministic: sem 0
    return [_trial(0, [2.00, 0.80, 100.0], s),   # A
            _trial(1, [1.50, 0.40, 100.0], s),   # D
            _trial(2, [1.60, 0.30, 100.0], s),   # E: D is better by > 2 sem in loss and recall
            _trial(3, [2.01, 0.79, 100.0], s)]   # B: A is better by 1 sem only


def _nums(trials: list[FrozenTrial]) -> list[int]:
    return [t.number for t in trials]


def test_within_noise_is_kept_and_beyond_noise_dropped() -> None:
    trials = _scene()
    # exact dominance drops B (front 1, cut by number against E)
    assert _nums(select_promoted(trials, DIRS, NAMES, "pareto", 3, noise=False)) == [0, 1, 2]
    # noise-aware: B is within noise of A, so the noise front {A, D, B} fits k = 3; E is dominated beyond noise
    assert _nums(select_promoted(trials, DIRS, NAMES, "pareto", 3)) == [0, 1, 3]
    assert _nums(noise_front(trials, DIRS)) == [0, 1, 3]
    assert _nums(pareto_front(trials, DIRS)) == [0, 1]
    # k = 2: the noise front overflows; exact rank 0 (A, D) goes first and B is reported, not silently dropped
    report = promotion_report(trials, DIRS, NAMES, "pareto", 2)
    assert _nums(list(report.promoted)) == [0, 1]
    by = {e.number: e for e in report.entries}
    assert [e.number for e in report.candidates()] == [3]
    assert by[3].note == "candidate (within noise of the front), cut by k" and by[3].exact_front == 1
    assert (by[2].noise_front, by[2].note) == (1, "dominated beyond noise (noise front 1)")
    assert by[0].promoted and by[0].note == "promoted"


def test_wider_or_narrower_intervals_change_the_verdict() -> None:
    trials = _scene()
    # z = 0.4: A's and B's intervals no longer touch (0.004 + 0.004 < 0.01), so B is dominated again: it leaves the
    # noise front and competes with E for the last place (the knee-first cut, tests/test_search_promotion_knee.py)
    assert _nums(noise_front(trials, DIRS, z=0.4)) == [0, 1]
    assert _nums(select_promoted(trials, DIRS, NAMES, "pareto", 3, z=0.4))[:2] == [0, 1]
    # z = 8: D's and E's intervals overlap too (0.08 + 0.08 > 0.1 in loss): everything is one noise front
    assert len(noise_front(trials, DIRS, z=8.0)) == 4


def test_sem_absent_none_or_zero_is_exact() -> None:
    base = _scene()
    for sem in (None, [0.0, 0.0, 0.0], [None, None, None]):
        trials = [_trial(t.number, list(t.values), sem) for t in base]
        assert objective_sems(trials[0]) == [0.0, 0.0, 0.0]
        assert _nums(select_promoted(trials, DIRS, NAMES, "pareto", 3)) == [0, 1, 2]
        assert _nums(noise_front(trials, DIRS)) == _nums(pareto_front(trials, DIRS)) == [0, 1]
        assert promotion_report(trials, DIRS, NAMES, "pareto", 3).entries[3].note == \
            "dominated beyond noise (noise front 1)"
    # noise=False ignores recorded sems and says so in the notes
    rep = promotion_report(base, DIRS, NAMES, "pareto", 2, noise=False)
    assert rep.z == 0.0 and rep.entries[3].note == "dominated (front 1)"


def _reference_select(trials: list[FrozenTrial], rule: str, k: int, m: int = 0) -> list[int]:
    """The promotion rule before noise-awareness (exact fronts peeled one by one; knee-first cut; topk sort)."""
    seen, done = set(), []
    for t in trials:
        if t.user_attrs["layout_key"] not in seen:
            seen.add(t.user_attrs["layout_key"])
            done.append(t)
    if rule == "topk":
        sign = 1.0 if DIRS[m] == "minimize" else -1.0
        return [t.number for t in sorted(done, key=lambda t: (sign * t.values[m], t.number))[:k]]
    pts = [list(t.values) for t in done]
    left, chosen = list(range(len(pts))), []
    while left and len(chosen) < k:
        front = [i for i in left if not any(dominates(pts[j], pts[i], DIRS) for j in left)]
        left = [i for i in left if i not in front]
        if len(chosen) + len(front) > k:  # the cut rule itself: tests/test_search_promotion_knee.py
            front = knee_first(pts, [[0.0] * len(p) for p in pts], front, DIRS)[: k - len(chosen)]
        chosen.extend(front)
    return [done[i].number for i in chosen]


@pytest.mark.parametrize("seed", range(6))
def test_exact_equivalence_on_random_rungs(seed: int) -> None:
    rng = random.Random(seed)
    # coarse grids make ties and duplicate layouts common
    trials = [_trial(n, [rng.choice([1.0, 1.5, 2.0, 2.5]), rng.choice([0.1, 0.5, 0.9]), rng.choice([10.0, 20.0])],
                     key=f"L{rng.randrange(14)}") for n in range(20)]
    noisy = [_trial(t.number, list(t.values), [rng.random(), rng.random(), 0.0], key=t.user_attrs["layout_key"])
             for t in trials]
    for k in (0, 1, 3, 7, 25):
        want = _reference_select(trials, "pareto", k)
        assert _nums(select_promoted(trials, DIRS, NAMES, "pareto", k)) == want
        assert _nums(select_promoted(noisy, DIRS, NAMES, "pareto", k, noise=False)) == want
        assert _nums(select_promoted(noisy, DIRS, NAMES, "pareto", k, z=0.0)) == want
        for m, name in enumerate(NAMES):
            want = _reference_select(trials, "topk", k, m)
            assert _nums(select_promoted(trials, DIRS, NAMES, "topk", k, name)) == want
            assert _nums(select_promoted(noisy, DIRS, NAMES, "topk", k, name, noise=False)) == want


def test_topk_keeps_a_wide_interval_over_a_tight_loser() -> None:
    # recall: t0 0.90 +- 0.001, t1 0.86 +- 0.03 (overlaps t0), t2 0.88 +- 0.001 (below t0 beyond noise)
    trials = [_trial(0, [2.0, 0.90, 1.0], [0.01, 0.001, 0.0]), _trial(1, [2.0, 0.86, 1.0], [0.01, 0.03, 0.0]),
              _trial(2, [2.0, 0.88, 1.0], [0.01, 0.001, 0.0])]
    assert _nums(select_promoted(trials, DIRS, NAMES, "topk", 2, "recall", noise=False)) == [0, 2]
    assert _nums(select_promoted(trials, DIRS, NAMES, "topk", 2, "recall")) == [0, 1]
    rep = promotion_report(trials, DIRS, NAMES, "topk", 1, "recall")
    assert _nums(list(rep.promoted)) == [0]  # the overflowing noise front is cut by the mean
    assert [e.number for e in rep.candidates()] == [1]
    assert [e.noise_front for e in rep.entries] == [0, 0, 1]


def test_report_covers_duplicates_and_infeasible() -> None:
    trials = _scene() + [_trial(4, [2.00, 0.80, 100.0], [0.01, 0.01, 0.0], key="L0"),
                         _trial(5, [1.0, 0.99, 1.0], [0.01, 0.01, 0.0], violation=0.5)]
    rep = promotion_report(trials, DIRS, NAMES, "pareto", 5)
    by = {e.number: e for e in rep.entries}
    assert len(rep.entries) == 6  # every complete trial has an entry
    assert by[4].note == "same layout as trial 0" and not by[4].promoted
    assert _nums(list(rep.promoted)) == [0, 1, 3, 2, 5]  # infeasible only fills up to k
    assert by[5].note == "infeasible (violation 0.5), promoted to fill k" and by[5].noise_front is None
    assert promotion_report(trials, DIRS, NAMES, "pareto", 3).entries[-1].note == "infeasible (violation 0.5)"


def test_interval_dominance_is_a_strict_partial_order() -> None:
    rng = random.Random(7)
    dirs = ["minimize", "maximize"]
    pts = [[rng.uniform(0, 1), rng.uniform(0, 1)] for _ in range(40)]
    sems = [[rng.choice([0.0, rng.uniform(0, 0.05)]), rng.uniform(0, 0.05)] for _ in pts]
    z = 2.0

    def better(i: int, j: int) -> bool:
        return dominates_beyond_noise(pts[i], pts[j], sems[i], sems[j], dirs, z)

    assert not any(better(i, i) for i in range(len(pts)))
    for i, j in itertools.permutations(range(len(pts)), 2):
        if better(i, j):
            assert not better(j, i) and dominates(pts[i], pts[j], dirs)  # asymmetric; implies exact dominance
    for i, j, k in itertools.permutations(range(len(pts)), 3):
        if better(i, j) and better(j, k):
            assert better(i, k)
    fronts = noise_fronts(pts, sems, dirs, z)
    assert sorted(i for f in fronts for i in f) == list(range(len(pts)))
    rank = {i: r for r, f in enumerate(fronts) for i in f}
    for i in range(len(pts)):
        assert not any(better(j, i) for j in range(len(pts)) if rank[j] >= rank[i])
        if rank[i] > 0:
            assert any(better(j, i) for j in fronts[rank[i] - 1])
    assert noise_fronts(pts, sems, dirs, 0.0) == non_dominated_fronts(pts, dirs)
    assert len(fronts) < len(non_dominated_fronts(pts, dirs))  # noise merges exact fronts


def test_bad_input_is_a_config_error() -> None:
    trials = _scene()
    with pytest.raises(ConfigError, match="promote.rule: 'best'"):
        select_promoted(trials, DIRS, NAMES, "best", 2)
    with pytest.raises(ConfigError, match="promote.noise_z: -1"):
        select_promoted(trials, DIRS, NAMES, "pareto", 2, z=-1)
    with pytest.raises(ConfigError, match="promote.noise_z: inf"):
        noise_front(trials, DIRS, z=math.inf)
    with pytest.raises(ConfigError, match="promote.k: -2"):
        select_promoted(trials, DIRS, NAMES, "pareto", -2)
    with pytest.raises(ConfigError, match="promote.objective: 'speed' is not an objective"):
        select_promoted(trials, DIRS, NAMES, "topk", 2, "speed")
    with pytest.raises(ConfigError, match="trial 9 user attr objective_sem: .*expected a list of 3"):
        select_promoted([_trial(9, [1.0, 0.5, 1.0], [0.1])], DIRS, NAMES, "pareto", 2)
    with pytest.raises(ConfigError, match="trial 9 user attr objective_sem: -0.1"):
        objective_sems(_trial(9, [1.0, 0.5, 1.0], [-0.1, 0.0, 0.0]))


def _write_scene_study(path: Path, name: str, promote: dict) -> None:
    """`_scene` as rung 0 of a journal study the way the search stores it (layouts, config with the rule)."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=f"{name}/rung0", storage=storage, directions=DIRS)
    study.set_user_attr("objectives", [{"name": n, "direction": d} for n, d in zip(NAMES, DIRS)])
    study.set_user_attr("config", {"name": name, "rungs": [{"proxy": "tiny", "promote": promote}]})
    layers = [["gla"] * 4, ["attn"] * 4, ["gla", "attn", "gla", "gla"], ["gla", "gla", "attn", "attn"]]
    for frozen, lay in zip(_scene(), layers):
        t = study.ask()
        layout = tiny_layout(lay)
        for k, v in (("layout", layout.to_dict()), ("layout_key", layout.key()), ("rung", 0),
                     ("objective_sem", frozen.user_attrs["objective_sem"]), ("n_seeds", 3)):
            t.set_user_attr(k, v)
        study.tell(t, list(frozen.values))


def test_status_prints_spread_and_candidates(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from hyla.cli import main

    monkeypatch.setenv("COLUMNS", "220")  # rich wraps narrow tables
    journal = tmp_path / "study.journal"
    _write_scene_study(journal, "nz", {"rule": "pareto", "k": 2})
    assert main(["search", "status", "nz", "--storage", str(journal)]) == 0
    out = capsys.readouterr().out
    pareto, rest = out.split("promotion (")
    assert "mean ± s.e.m. over seeds" in pareto and "seeds" in pareto
    assert "2 ± 0.01" in pareto and "0.8 ± 0.01" in pareto  # trial 0: loss 2.00, recall 0.80
    assert "100 B ±" not in pareto  # memory is exact: no spread shown
    assert rest.startswith("pareto, k=2, intervals ±2 s.e.m.): trials 0, 1")
    cands = rest.split("Not promoted but within noise of the front (1): cut by k=2")[1]
    assert "GAGA" not in cands and "GGAA" in cands  # trial 3 (B) only; E (2) is dominated beyond noise
    assert "candidate (within noise of the front), cut by k" in cands

    # the rule stored with noise off: exact means, B is just dominated, nothing within noise is listed
    journal2 = tmp_path / "exact.journal"
    _write_scene_study(journal2, "ex", {"rule": "pareto", "k": 2, "noise": False})
    assert main(["search", "status", "ex", "--storage", str(journal2)]) == 0
    out = capsys.readouterr().out
    assert "pareto, k=2, exact means): trials 0, 1" in out and "Not promoted" not in out
