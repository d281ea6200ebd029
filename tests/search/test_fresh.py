"""Rung 0 spends no trial on a layout it already has (search/fresh.py), in small discrete spaces too."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hyla.search.config import load_study_config
from hyla.search.fresh import FreshAsk, enumerate_layouts
from hyla.search.prepare import prepare
from hyla.space.search_space import SearchSpace, load_space, suggest_layout
from conftest import REPO

QUICKSTART = REPO / "examples" / "quickstart.yaml"
SAMPLERS = {"tpe": lambda s: optuna.samplers.TPESampler(seed=s), "random": lambda s: optuna.samplers.RandomSampler(s),
            "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s)}


def _quickstart_space(tmp_path: Path) -> SearchSpace:
    return prepare(load_study_config(QUICKSTART, run_dir=str(tmp_path / "qs"))).space


def _fake_values(layout) -> list[float]:
    attn = sum(spec.has_softmax for spec in layout.layers)
    return [4.0 + 0.01 * len(layout.key()), min(1.0, 0.25 + 0.3 * attn), 1000.0 * (1 + attn)]


def test_the_quickstart_space_has_nine_layouts(tmp_path: Path) -> None:
    layouts = enumerate_layouts(_quickstart_space(tmp_path))
    assert layouts is not None and len(layouts) == 9  # 16 parameter sets build 9 distinct layouts
    space = _quickstart_space(tmp_path)
    for key, params in layouts.items():
        assert suggest_layout(optuna.trial.FixedTrial(params), space).key() == key
    assert enumerate_layouts(load_space(Path(QUICKSTART).parent / "space_tiny.yaml")) is None  # free placement


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("seed", range(4))
def test_every_counted_trial_is_a_new_layout(tmp_path: Path, sampler: str, seed: int) -> None:
    space = _quickstart_space(tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"], sampler=SAMPLERS[sampler](seed))
    study.enqueue_trial({"placement": "uniform_last", "n_attention": 4})  # the Transformer, as the quickstart seeds
    fresh = FreshAsk(study, space, seed)
    have: dict[str, int] = {}
    for _ in range(8):
        asked = fresh.ask(have)
        assert asked is not None
        trial, layout = asked
        assert layout.key() not in have
        have[layout.key()] = trial.number
        study.tell(trial, _fake_values(layout))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len({suggest_layout(optuna.trial.FixedTrial(t.params), space).key() for t in done}) == 8
    for t in study.get_trials(states=(TrialState.PRUNED,)):  # repeats: not trained, not counted, linked
        assert t.user_attrs["layout_key"] in have and t.user_attrs["repeat_of"] == have[t.user_attrs["layout_key"]]
    assert fresh.repeats == len(study.get_trials(states=(TrialState.PRUNED,)))
    # the ninth and last layout, then nothing: the space is exhausted
    trial, layout = fresh.ask(have)
    have[layout.key()] = trial.number
    study.tell(trial, _fake_values(layout))
    assert fresh.ask(have) is None and fresh.exhausted


def test_a_space_smaller_than_n_trials_is_swept(tmp_path: Path) -> None:
    space = _quickstart_space(tmp_path)
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=0))
    fresh = FreshAsk(study, space, 0)
    assert fresh.sweep({}, n_trials=8) == 0  # 9 layouts > 8 trials: the sampler chooses
    assert fresh.sweep({}, n_trials=20) == 9
    assert fresh.sweep({}, n_trials=20) == 0  # already waiting
    have: dict[str, int] = {}
    while (asked := fresh.ask(have)) is not None:
        trial, layout = asked
        have[layout.key()] = trial.number
        study.tell(trial, _fake_values(layout))
    assert len(have) == 9 and fresh.repeats == 0 and fresh.exhausted
