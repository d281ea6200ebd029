"""Promotion keeps the knee region of a front, not only its extremes (search/rungs.py: knee first, then spread)."""

from __future__ import annotations

from optuna.trial import FrozenTrial, TrialState, create_trial

from hyla.analysis.pareto import knee_index
from hyla.search.rungs import knee_first, pareto_select, select_promoted

NAMES = ["lm_loss", "recall", "memory_bytes"]
DIRS = ["minimize", "maximize", "minimize"]

#: Rung 0 of the quickstart on 2 CPU cores (2026-12-06; 3 seeds, mean and s.e.m.): layout -> (values, sems).
#: All five are on one noise front: the 40-step LM loss differs by less than its seed noise.
QUICKSTART_RUNG0 = {
    "AAAA": ([4.233, 1.0, 2.0e6], [0.064, 0.0, 0.0]),
    "NNNN": ([4.430, 0.24, 36e3], [0.090, 0.024, 0.0]),
    "NNAN": ([4.499, 0.999, 539e3], [0.095, 0.00033, 0.0]),
    "nnnn": ([4.519, 0.9998, 1.0e6], [0.073, 0.00022, 0.0]),
    "nnnA": ([4.336, 0.9998, 1.3e6], [0.022, 0.00022, 0.0]),
}


def _trials(scene: dict[str, tuple[list[float], list[float]]]) -> list[FrozenTrial]:
    out = []
    for number, (key, (values, sem)) in enumerate(scene.items()):
        t = create_trial(values=values, user_attrs={"layout_key": key, "objective_sem": sem, "n_seeds": 3},
                         state=TrialState.COMPLETE)
        t.number = number
        out.append(t)
    return out


def _layouts(trials: list[FrozenTrial]) -> list[str]:
    return [t.user_attrs["layout_key"] for t in trials]


def test_the_quickstart_front_promotes_its_knee_hybrid_not_just_the_two_extremes() -> None:
    trials = _trials(QUICKSTART_RUNG0)
    promoted = _layouts(select_promoted(trials, DIRS, NAMES, "pareto", 2))
    # the knee: full recall at a quarter of the Transformer's memory; then the layout farthest from it
    assert promoted == ["NNAN", "NNNN"], promoted
    assert _layouts(select_promoted(trials, DIRS, NAMES, "pareto", 3)) == ["NNAN", "NNNN", "AAAA"]


def test_noise_keeps_a_seed_noise_objective_from_moving_the_knee() -> None:
    trials = _trials(QUICKSTART_RUNG0)
    # on the bare means the 40-step loss (differences within 2 s.e.m.) decides: the knee becomes nnnA
    assert _layouts(select_promoted(trials, DIRS, NAMES, "pareto", 1, noise=False)) == ["nnnA"]
    assert _layouts(select_promoted(trials, DIRS, NAMES, "pareto", 1)) == ["NNAN"]
    # the analysis knee (`hyla analysis export --pick knee`) is the same rule
    values = [v for v, _ in QUICKSTART_RUNG0.values()]
    sems = [s for _, s in QUICKSTART_RUNG0.values()]
    assert list(QUICKSTART_RUNG0)[knee_index(values, DIRS, sems=sems)] == "NNAN"
    assert list(QUICKSTART_RUNG0)[knee_index(values, DIRS)] == "nnnA"


def test_a_convex_front_gives_the_knee_then_both_extremes() -> None:
    # minimise both: a convex front whose knee is (2, 2); extremes (0, 10) and (10, 0)
    pts = [(0.0, 10.0), (1.0, 5.0), (2.0, 2.0), (5.0, 1.0), (10.0, 0.0)]
    zero = [[0.0, 0.0]] * len(pts)
    assert knee_first(pts, zero, range(5), ["minimize", "minimize"]) == [2, 0, 4, 1, 3]
    assert pareto_select(pts, ["minimize", "minimize"], 3) == [2, 0, 4]
    # units do not matter
    scaled = [(x * 1000.0, y) for x, y in pts]
    assert pareto_select(scaled, ["minimize", "minimize"], 3) == [2, 0, 4]


def test_finalists_are_measured_against_the_spread_of_the_whole_search() -> None:
    """Rung 1 of the same quickstart holds two finalists, each the best in one objective, so either is 1 from the
    utopia point of the pair and the noisier one wins by its wider interval; rung 0 as context sets the scale."""
    rung1 = _trials({"NNNA": ([4.357, 0.9979, 539e3], [0.05, 0.0015, 0.0]),
                     "NNNN": ([4.511, 0.3371, 36e3], [0.069, 0.041, 0.0])})
    rung0 = _trials(QUICKSTART_RUNG0)
    assert _layouts(select_promoted(rung1, DIRS, NAMES, "pareto", 1)) == ["NNNN"]
    assert _layouts(select_promoted(rung1, DIRS, NAMES, "pareto", 1, context=rung0)) == ["NNNA"]
    values = [list(t.values) for t in rung1]
    sems = [t.user_attrs["objective_sem"] for t in rung1]
    assert knee_index(values, DIRS, sems=sems, scale=[list(t.values) for t in rung0]) == 0
