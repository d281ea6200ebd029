"""Scales, the paper grid, preset names, explicit placements and Layout (de)serialisation."""

from __future__ import annotations

import pytest

from hyla.config import ConfigError
from hyla.space.layout import Layout
from hyla.space.presets import (SCALES, attention_at, attention_indices, get_scale, load_layout, paper_grid,
                                resolve_preset)


@pytest.mark.parametrize("ratio,expected", [(24, (23,)), (12, (11, 23)), (6, (5, 11, 17, 23)),
                                            (3, (2, 5, 8, 11, 14, 17, 20, 23))])
def test_last_convention(ratio: int, expected: tuple[int, ...]) -> None:
    assert attention_indices(24, ratio, "last") == expected


@pytest.mark.parametrize("ratio,expected", [(12, (12,)), (6, (6, 13, 20)), (3, (3, 7, 11, 15, 19, 23))])
def test_literal_convention(ratio: int, expected: tuple[int, ...]) -> None:
    assert attention_indices(24, ratio, "literal") == expected


def test_positions_within_groups() -> None:
    assert attention_indices(24, 5, "last", "first") == (0, 5, 10, 15)  # trailing 4 layers stay linear
    assert attention_indices(24, 5, "last", "middle") == (2, 7, 12, 17)
    assert attention_indices(24, 6, "literal", "first") == (0, 7, 14)
    with pytest.raises(ConfigError, match="ratio position: unknown 'centre'; expected one of last, first, middle"):
        attention_indices(24, 6, "last", "centre")


def test_ratio_not_fitting_depth() -> None:
    with pytest.raises(ConfigError, match=r"24:1 \(literal\) does not fit depth 24"):
        attention_indices(24, 24, "literal")
    with pytest.raises(ConfigError, match="30:1 .* depth 24"):
        resolve_preset("gla-30:1@tiny")


@pytest.mark.parametrize("scale", [s for s in SCALES if SCALES[s].n_layers == 24])
def test_paper_grid(scale: str) -> None:
    grid = paper_grid(scale)
    assert len(grid) == 31
    names = [l.name for l in grid]
    assert len(set(names)) == 31 and len({l.key() for l in grid}) == 31
    assert f"gdn-6:1@{scale}" in names and f"gla-pure@{scale}" in names and names[-1] == f"transformer@{scale}"
    s = get_scale(scale)
    for layout in grid:
        assert (layout.n_layers, layout.d_model, layout.num_heads) == (s.n_layers, s.d_model, s.num_heads)
        assert resolve_preset(layout.name).key() == layout.key()


def test_shallow_grid_keeps_the_ratios_that_fit() -> None:
    grid = paper_grid("mini")  # 4 layers: only 3:1 leaves an attention layer
    assert len(grid) == 13 and {l.name for l in grid} >= {"gdn-3:1@mini", "gdn-pure@mini", "transformer@mini"}
    assert resolve_preset("gdn-3:1@mini").attention_layers == (2,)


def test_literal_grid_skips_ratios_that_do_not_fit() -> None:
    grid = paper_grid("tiny", "literal")
    assert len(grid) == 25 and not any(l.name.startswith("gla-24:1") for l in grid)
    assert resolve_preset("gdn-6:1:literal@tiny").key() in {l.key() for l in grid}
    with pytest.raises(ConfigError, match="convention"):
        paper_grid("tiny", "first")


def test_names() -> None:
    l = resolve_preset("gdn-6:1@340m")
    assert l.attention_layers == (5, 11, 17, 23) and l.linear_mixers == ("gdn",) and l.d_model == 1024
    assert resolve_preset("gla-6:1").name == "gla-6:1@340m"
    assert resolve_preset("gla-6:1", default_scale="tiny").d_model == 32
    assert resolve_preset("gla-6:1:literal@small").attention_layers == (6, 13, 20)
    assert resolve_preset("gla-6:1:last@small").key() == resolve_preset("gla-6:1@small").key()
    assert resolve_preset("transformer@1.3b").attention_layers == tuple(range(24))
    assert resolve_preset("mamba2-6:1@tiny").linear_mixers == ("mamba2",)
    assert resolve_preset("gla-pure@tiny").attention_layers == ()
    assert resolve_preset("gla-at3,11@tiny").attention_layers == (3, 11)
    assert resolve_preset(" GLA-3:1@TINY ").name == "gla-3:1@tiny"


@pytest.mark.parametrize("bad,match", [
    ("foo-6:1@tiny", "unknown mixer 'foo'.*gla"),
    ("gla-6:1@2b", "unknown scale '2b'.*tiny, mini, small, 340m, 1.3b"),
    ("gla-6:1:first@tiny", "unknown placement convention 'first'.*last, literal"),
    ("gla-6:2@tiny", "cannot parse"),
    ("gla-0:1@tiny", "r >= 1"),
    ("gla-at30@tiny", r"attention index 30 out of range; expected \[0, 24\)"),
    ("@tiny", "cannot parse"),
])
def test_bad_names(bad: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_preset(bad)


def test_attention_at() -> None:
    l = attention_at("gla-pure@tiny", [0, 23, 23])
    assert l.attention_layers == (0, 23)
    assert attention_at(resolve_preset("gdn-6:1@tiny"), [0]).attention_layers == (0, 5, 11, 17, 23)
    with pytest.raises(ConfigError, match=r"attention index 30 out of range; expected \[0, 24\)"):
        attention_at("gla-pure@tiny", [30])
    with pytest.raises(ConfigError, match=r"attention index -1 out of range"):
        attention_at("gla-pure@tiny", [-1])


def test_heads_not_dividing() -> None:
    with pytest.raises(ConfigError, match="num_heads: 3 does not divide d_model 32"):
        Layout(layers=("gla",), d_model=32, vocab_size=10, mlp_hidden=8, num_heads=3)


def test_layout_yaml_and_dict_round_trip(tmp_path) -> None:
    l = attention_at("gla-6:1@tiny", [0]).with_layers(
        [*resolve_preset("gla-6:1@tiny").layers[:-2], "gdn+a1@16", {"mixer": "gla", "options": {"num_heads": 2}}],
        name="mix")
    assert Layout.from_dict(l.to_dict()) == l
    path = tmp_path / "mix.yaml"
    l.dump(path)
    back = load_layout(path)
    assert back == l and back.key() == l.key()
    assert load_layout(str(path)).name == "mix"
    # the key ignores the name and is stable across processes (pinned value)
    assert l.with_layers(l.layers, name="other").key() == l.key()
    assert resolve_preset("gla-6:1@tiny").key() == "19e7642b0353572d"  # stored in studies: must not drift
    assert resolve_preset("gla-6:1@tiny").key() != resolve_preset("gla-3:1@tiny").key()


def test_load_layout_errors(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [gla, attn\nd_model: 32\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        Layout.load(bad)
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_layout(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_layout(tmp_path / "missing.yaml")
    typo = tmp_path / "typo.yaml"
    typo.write_text("layers: [gla]\nd_model: 32\nvocab_size: 10\nmlp_hidden: 8\nnum_head: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'num_heads'"):
        load_layout(typo)
