"""Closed-form mixer sizes (hyla.space.mixer_kinds) against the real fla layers built on CPU."""

from __future__ import annotations

import warnings

import pytest

from hyla.config import ConfigError
from hyla.space.mixer_kinds import MIXER_KINDS, get_mixer_kind

torch = pytest.importorskip("torch")
fla_layers = pytest.importorskip("fla.layers")

#: kind -> option overrides to try (besides the defaults) at several widths
CASES: dict[str, list[dict]] = {
    "hgrn": [{}, {"expand_ratio": 2}, {"use_short_conv": True, "conv_size": 3}],
    "retnet": [{}, {"num_heads": 2, "expand_k": 0.5, "expand_v": 1.0}, {"num_heads": 4}],
    "gla": [{}, {"num_heads": 2, "use_short_conv": True}, {"gate_low_rank_dim": 8, "expand_v": 2.0, "conv_size": 2,
                                                          "use_short_conv": True}],
    "hgrn2": [{}, {"expand_ratio": 16}, {"expand_ratio": 8, "use_short_conv": True}],
    "deltanet": [{}, {"num_heads": 2, "use_beta": False}, {"use_short_conv": False, "expand_v": 2.0}],
    "gdn": [{}, {"num_heads": 2, "head_dim": 16, "expand_v": 1.0}, {"use_short_conv": False, "conv_size": 2}],
    # mamba2 num_heads is filled in as expand*d/head_dim (fla requires that product) by _fit
    "mamba2": [{}, {"head_dim": 16, "state_size": 16, "n_groups": 2}, {"expand": 1, "head_dim": 16, "conv_size": 2}],
}
WIDTHS = (32, 64)


def _build(kind: str, d: int, overrides: dict):
    mk = get_mixer_kind(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(fla_layers, mk.fla_class)(hidden_size=d, layer_idx=0, **mk.fla_kwargs(d, overrides))


def _dense_numel(layer) -> int:
    """Linear weights + conv kernels of a real layer (what MixerFormula.dense_params should count)."""
    total = 0
    for m in layer.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
            total += m.weight.numel()
    return total


def test_every_kind_has_cases() -> None:
    assert set(CASES) == set(MIXER_KINDS)


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("kind,overrides", [(k, o) for k, opts in CASES.items() for o in opts])
def test_params_match_fla(kind: str, overrides: dict, d: int) -> None:
    if kind == "mamba2" and "head_dim" in overrides:
        overrides = {**overrides, "num_heads": overrides.get("expand", 2) * d // overrides["head_dim"]}
    layer = _build(kind, d, overrides)
    f = get_mixer_kind(kind).formula(d, overrides)
    assert f.params == sum(p.numel() for p in layer.parameters())
    assert f.dense_params == _dense_numel(layer)


def test_state_formulas_follow_reference_table() -> None:
    d, b = 64, 2
    gla = get_mixer_kind("gla").formula(d, {"num_heads": 2, "use_short_conv": True})
    K, V, H = 32, 64, 2
    assert gla.recurrent_bytes(b) == 4 * K * V // H
    assert gla.conv_bytes(b) == (2 * K + V) * 4 * b
    hgrn = get_mixer_kind("hgrn").formula(d, {"use_short_conv": True})
    assert hgrn.recurrent_bytes(b) == d * b  # model dtype, not fp32
    assert hgrn.conv_bytes(b) == 2 * d * 4 * b
    er = 16
    h2 = get_mixer_kind("hgrn2").formula(d, {"expand_ratio": er, "use_short_conv": True})
    assert h2.recurrent_bytes(b) == 4 * d * er
    assert h2.conv_bytes(b) == (2 * (d // er) * er + d) * 4 * b
    ret = get_mixer_kind("retnet").formula(d, {})
    assert ret.conv_bytes(b) == 0
    gdn = get_mixer_kind("gdn").formula(d, {"num_heads": 2, "head_dim": 16})
    assert gdn.recurrent_bytes(b) == 4 * 2 * 16 * 32
    assert gdn.conv_bytes(b) == (2 * 2 * 16 + 2 * 32) * 4 * b
    m = get_mixer_kind("mamba2").formula(d, {})
    I, N = 2 * d, min(128, d)
    assert m.recurrent_bytes(b) == 4 * I * N
    assert m.conv_bytes(b) == (I + 2 * N) * 4 * b


def test_flame_340m_state_sizes() -> None:
    """REFERENCE.md: flame 340M GLA (H4, expand_k 0.5) 12 MiB, GDN (21 layers, H6 x 256) 64 MiB per sequence."""
    gla = get_mixer_kind("gla").formula(1024, {"num_heads": 4})
    assert 24 * gla.recurrent_bytes(2) == 12 * 2**20
    gdn = get_mixer_kind("gdn").formula(1024, {"num_heads": 6, "head_dim": 256})
    assert 21 * gdn.recurrent_bytes(2) + 21 * gdn.conv_bytes(2) > 64 * 2**20 - 2**20  # recurrent 63 MiB + conv


def test_retnet_head_dim_limit() -> None:
    with pytest.raises(ConfigError, match="head_k_dim"):
        get_mixer_kind("retnet").resolve_options(1024, {"num_heads": 2})


@pytest.mark.parametrize("d", [32, 64, 128, 256, 512, 1024, 2048])
def test_default_states_keep_the_paper_ratios_at_every_width(d: int) -> None:
    """GLA, GatedDeltaNet, HGRN-2 and DeltaNet hold one recurrent state size per layer at their default options,
    as at 340M and 1.3B (128 x d from d 256 up, d^2/2 below); RetNet 4x it, HGRN d. A narrow model (tiny, mini,
    the recall probe's width 64) must not hand one kind more memory than the paper's scales do."""
    elems = {m: get_mixer_kind(m).formula(d).recurrent_elems for m in ("gla", "gdn", "hgrn2", "deltanet", "retnet",
                                                                      "hgrn")}
    base = 128 * d if d >= 256 else d * d // 2
    assert {m: elems[m] for m in ("gla", "gdn", "hgrn2", "deltanet")} == dict.fromkeys(
        ("gla", "gdn", "hgrn2", "deltanet"), base)
    assert elems["retnet"] == 4 * base and elems["hgrn"] == d
