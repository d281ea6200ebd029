"""SearchSpace parsing, Optuna round trips (enqueue -> ask -> suggest_layout) and constraints."""

from __future__ import annotations

import random

import optuna
import pytest

from hyla.config import ConfigError
from hyla.space.cost import inference_memory, param_count
from hyla.space.presets import paper_grid, resolve_preset
from hyla.space.search_space import (SearchSpace, constraint_values, layout_to_params, load_space,
                                     placement_indices, suggest_layout)
from conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)
EXAMPLE = REPO / "examples" / "space_tiny.yaml"

SPACES = {
    "example": load_space(EXAMPLE),
    "per_layer": SearchSpace.from_dict({
        "scale": "tiny", "n_layers": 8, "mixers": ["gla", "gdn", "hgrn", "mamba2"], "per_layer_mixer": True,
        "n_attention": [0, 1, 2, 4], "placements": ["uniform_first", "uniform_last", "middle", "free"],
        "headwise": {"heads": [0, 1, 2], "per_layer": True}, "windows": [None, 16, 32], "windows_per_layer": True,
        "mixer_options": {"gla": {"num_heads": 2}}}),
    "paper": SearchSpace.from_dict({"mixers": ["hgrn", "retnet", "gla", "hgrn2", "deltanet", "gdn"],
                                    "placements": ["uniform_last", "free"]}),
}


def _random_params(space: SearchSpace, rng: random.Random) -> dict:
    """Random answers for every parameter suggest_layout asks (via a recording fake trial)."""
    class Rand:
        def __init__(self) -> None:
            self.params: dict = {}

        def suggest_categorical(self, name, choices):
            self.params[name] = rng.choice(list(choices))
            return self.params[name]

    t = Rand()
    layout = suggest_layout(t, space)
    return layout, t.params


@pytest.mark.parametrize("name", list(SPACES))
def test_enqueue_round_trip(name: str) -> None:
    space = SPACES[name]
    rng = random.Random(0)
    for _ in range(15):
        layout, _ = _random_params(space, rng)
        params = layout_to_params(layout, space)
        study = optuna.create_study()
        study.enqueue_trial(params)
        trial = study.ask()
        assert suggest_layout(trial, space).key() == layout.key()
        study.tell(trial, 0.0)
        # a finished FrozenTrial answers the same suggest calls
        assert suggest_layout(study.trials[-1], space).key() == layout.key()


def test_study_asks_match_inverse() -> None:
    space = SPACES["example"]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        layout = suggest_layout(trial, space)
        params = layout_to_params(layout, space)
        # the inverse may pick another encoding of the same layout (a uniform layout also has free bits)
        assert suggest_layout(optuna.trial.FixedTrial(params), space).key() == layout.key()
        if trial.params.get("placement", "uniform_last") == "uniform_last":
            assert params == trial.params
        study.tell(trial, 0.0)


def test_paper_grid_in_paper_space() -> None:
    space = SPACES["paper"]
    for layout in paper_grid("tiny"):
        params = layout_to_params(layout, space)
        assert suggest_layout(optuna.trial.FixedTrial(params), space).key() == layout.key()
    assert layout_to_params(resolve_preset("gdn-6:1@tiny"), space) == {"placement": "uniform_last", "ratio": 6,
                                                                    "mixer": "gdn"}


def test_placements() -> None:
    assert placement_indices("uniform_last", 24, 4) == (5, 11, 17, 23)
    assert placement_indices("uniform_first", 24, 4) == (0, 6, 12, 18)
    assert placement_indices("middle", 24, 4) == (3, 9, 15, 21)
    assert placement_indices("middle", 24, 1) == (12,)
    assert placement_indices("uniform_last", 24, 0) == ()


@pytest.mark.parametrize("placement,position", [("uniform_last", "last"), ("uniform_first", "first"),
                                                ("middle", "middle")])
def test_ratio_means_what_the_presets_mean(placement: str, position: str) -> None:
    from hyla.space.presets import attention_indices

    for r in range(1, 25):  # one space per ratio: beyond 12, first/middle positions coincide for some ratios
        space = SearchSpace.from_dict({"ratios": [r, 0], "placements": [placement]})
        layout = suggest_layout(optuna.trial.FixedTrial({"ratio": r}), space)
        assert layout.attention_layers == attention_indices(24, r, "last", position), r
        assert len(layout.attention_layers) == 24 // r
        if 24 % r == 0:  # where r divides the depth, a ratio and n_attention = N // r agree
            assert layout.attention_layers == placement_indices(placement, 24, 24 // r)
        if placement == "uniform_last":  # the preset of the same name, and its params back
            assert layout.key() == resolve_preset(f"gla-{r}:1@tiny").key()
            assert layout_to_params(resolve_preset(f"gla-{r}:1@tiny"), space) == {"ratio": r}


def test_ratio_five_is_not_six() -> None:
    space = SearchSpace.from_dict({"ratios": [5, 6]})
    five, six = (suggest_layout(optuna.trial.FixedTrial({"ratio": r}), space) for r in (5, 6))
    assert five.attention_layers == (4, 9, 14, 19) and six.attention_layers == (5, 11, 17, 23)
    n4 = SearchSpace.from_dict({"n_attention": [4]})
    assert suggest_layout(optuna.trial.FixedTrial({}), n4).attention_layers == (5, 11, 17, 23)
    with pytest.raises(ConfigError, match=r"attention at \[4, 9, 14, 19\] matches no placement"):
        layout_to_params(resolve_preset("gla-5:1@tiny"), n4)  # what a space cannot express is refused


def test_not_in_space() -> None:
    space = SPACES["example"]
    with pytest.raises(ConfigError, match="mixer 'retnet' not in the space's choices"):
        layout_to_params(resolve_preset("retnet-6:1@tiny"), space)
    with pytest.raises(ConfigError, match="d_model 1024 != 32"):
        layout_to_params(resolve_preset("gla-6:1@340m"), space)
    uniform = SearchSpace.from_dict({"placements": ["uniform_last"], "ratios": [6, 0]})
    with pytest.raises(ConfigError, match=r"attention at \[11, 23\] matches no placement"):
        layout_to_params(resolve_preset("gla-12:1@tiny"), uniform)
    mixed = resolve_preset("gla-6:1@tiny")
    mixed = mixed.with_layers(["gdn", *mixed.layers[1:]])
    with pytest.raises(ConfigError, match="mixer differs between layers"):
        layout_to_params(mixed, SearchSpace.from_dict({"mixers": ["gla", "gdn"]}))


@pytest.mark.parametrize("data,match", [
    ({"mixer": ["gla"]}, "unknown field 'mixer' \\(did you mean 'mixers'"),
    ({"mixers": ["foo"]}, "unknown mixer 'foo'"),
    ({"ratios": [30]}, "30 does not fit depth 24"),
    ({"ratios": [13, 14], "placements": ["uniform_first"]},
     r"13 and 14 both put attention at \[0\] \(placement uniform_first, depth 24\)"),
    ({"ratios": [6], "n_attention": [2]}, "not both"),
    ({"n_attention": [25]}, r"25 out of range; expected \[0, 24\]"),
    ({"placements": ["everywhere"]}, "unknown placement 'everywhere'"),
    ({"headwise": {"heads": [3]}}, r"headwise.heads: 3 out of range; expected \[0, 2\]"),
    ({"windows": [0]}, "windows: 0 must be a positive"),
    ({"mixers": []}, "mixers: empty"),
    ({"mixer_options": {"gla": {"num_head": 2}}}, "did you mean 'num_heads'"),
    ({"constraints": {"params_kind": "embedding"}}, "params_kind: 'embedding' is not allowed"),
    ({"scale": "huge"}, "unknown scale 'huge'"),
])
def test_bad_spaces(data: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SearchSpace.from_dict(data)


def test_dict_round_trip_and_key(tmp_path) -> None:
    for space in SPACES.values():
        again = SearchSpace.from_dict(space.to_dict())
        assert again == space and again.key() == space.key()
    assert SPACES["example"].key() != SPACES["paper"].key()
    assert SearchSpace().key() == SearchSpace.from_dict({}).key()
    bad = tmp_path / "s.yaml"
    bad.write_text("mixers: [gla\n")
    with pytest.raises(ConfigError, match="s.yaml: malformed YAML"):
        load_space(bad)


def test_constraints() -> None:
    layout = resolve_preset("gla-6:1@tiny")
    total = param_count(layout).total
    mem = inference_memory(layout, 128).total_bytes
    space = SearchSpace.from_dict({"constraints": {"params_target": total, "params_tolerance": 0.05,
                                                   "max_memory_bytes": mem, "memory_context": 128}})
    vals = constraint_values(layout, space)
    assert vals == {"params": pytest.approx(-0.05), "memory": pytest.approx(0.0)}
    tight = SearchSpace.from_dict({"constraints": {"params_target": total // 2, "params_tolerance": 0.1,
                                                   "max_memory_bytes": mem // 2, "memory_context": 128}})
    vals = constraint_values(layout, tight)
    assert vals["params"] > 0 and vals["memory"] > 0
    assert constraint_values(layout, SearchSpace()) == {}
    # more attention layers -> more KV at long context -> the memory constraint orders them
    dense = resolve_preset("gla-3:1@tiny")
    space = SearchSpace.from_dict({"constraints": {"max_memory_bytes": mem, "memory_context": 4096}})
    assert constraint_values(dense, space)["memory"] > constraint_values(layout, space)["memory"]
