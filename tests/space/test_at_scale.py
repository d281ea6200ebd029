"""Carrying a layout's pattern to another scale (`hyla.space.presets.at_scale`): what is kept, what the scale sets."""

from __future__ import annotations

import pytest

from hyla.config import ConfigError
from hyla.space.layout import LayerSpec, Layout
from hyla.space.presets import SCALES, at_scale, get_scale, resolve_preset


def _shape(layout: Layout) -> tuple[int, int, int, int, int]:
    return layout.n_layers, layout.d_model, layout.num_heads, layout.mlp_hidden, layout.vocab_size


@pytest.mark.parametrize("target", ["340m", "1.3b"])
def test_same_depth_is_layer_by_layer(target: str) -> None:
    s = get_scale(target)
    for name in ("gdn-6:1", "gla-3:1", "hgrn2-12:1", "gla-pure", "transformer", "mamba2-24:1", "gla-5:1"):
        big = at_scale(resolve_preset(f"{name}@tiny"), target)
        want = resolve_preset(f"{name}@{target}")
        assert _shape(big) == (s.n_layers, s.d_model, s.num_heads, s.mlp_hidden, s.vocab_size)
        assert big.key() == want.key(), name  # the preset at the target scale, exactly (defaults re-derived)
        assert big.name == f"{name}@tiny at {target}"


def test_shallow_pattern_repeats_as_a_period() -> None:
    mini = Layout(layers=("gdn", "gdn", "gdn", "attn"), d_model=64, vocab_size=512, mlp_hidden=128, num_heads=2)
    big = at_scale(mini, "340m")
    assert big.layer_string() == "NNNA" * 6 and big.attention_layers == (3, 7, 11, 15, 19, 23)
    assert big.key() == resolve_preset("gdn-4:1@340m").key()  # uniform_last r:1 stays r:1
    middle = mini.with_layers(["gdn", "gdn", "attn", "gdn"])  # the `middle` placement of one attention layer
    assert at_scale(middle, "1.3b").attention_layers == (2, 6, 10, 14, 18, 22)
    assert at_scale(resolve_preset("transformer@mini"), "1.3b").key() == resolve_preset("transformer@1.3b").key()
    assert at_scale(resolve_preset("gdn-pure@mini"), "340m").key() == resolve_preset("gdn-pure@340m").key()


def test_heads_windows_and_options() -> None:
    src = Layout(layers=(LayerSpec(mixer="gdn", attn_heads=1, window=64, options={"num_heads": 2, "expand_v": 1.0}),
                         "attn@128", LayerSpec(mixer="gla", options={"num_heads": 2, "gate_low_rank_dim": 8}),
                         LayerSpec(mixer="hgrn2", options={"expand_ratio": 16, "use_short_conv": True})),
                 d_model=64, vocab_size=512, mlp_hidden=128, num_heads=4, num_kv_heads=2, rope_theta=5e5,
                 norm_eps=1e-5, name="winner")
    big = at_scale(src, "340m", name="promoted")
    assert big.name == "promoted" and big.n_layers == 24 and big.d_model == 1024
    l0, l1, l2, l3 = big.layers[:4]
    # head-wise heads and GQA keep their share of the heads (1 of 4 -> 4 of 16; kv 2 of 4 -> 8 of 16)
    assert (l0.mixer, l0.attn_heads, l0.window) == ("gdn", 4, 64) and big.num_kv_heads == 8
    assert l1 == LayerSpec(mixer="attn", window=128)
    # width-derived options (heads, hgrn2's expand_ratio) reset to the new width's defaults; the rest are kept
    assert l0.option_dict() == {"expand_v": 1.0} and l2.option_dict() == {"gate_low_rank_dim": 8}
    assert l3.option_dict() == {"use_short_conv": True} and big.mixer_options(3)["expand_ratio"] == 128
    assert big.mixer_options(0)["num_heads"] == 4  # gdn's default at d_model 1024
    assert (big.rope_theta, big.norm_eps) == (5e5, 1e-5)
    assert at_scale(big, "340m").key() == big.key()  # at its own scale nothing changes


def test_refusals() -> None:
    five = Layout(layers=("gla",) * 5, d_model=32, vocab_size=512, mlp_hidden=64, num_heads=2)
    with pytest.raises(ConfigError, match=r"^n_layers: depth 5 .* does not divide depth 24 of scale 340m; "
                                          r"expected one of 1, 2, 3, 4, 6, 8, 12, 24"):
        at_scale(five, "340m")
    with pytest.raises(ConfigError, match="does not divide depth 4 of scale mini"):
        at_scale(resolve_preset("gla-6:1@tiny"), "mini")  # 24 -> 4 layers: no period
    small = resolve_preset("gla-pure@small").with_layers(["gla+a1"] * 24)  # 1 of 4 heads
    with pytest.raises(ConfigError, match=r"^layers\[0\].attn_heads: 1 of 4 heads cannot keep its share at scale "
                                          r"tiny \(2 heads"):
        at_scale(small, "tiny")
    with pytest.raises(ConfigError, match="unknown scale 'huge'"):
        at_scale(five, "huge")
    assert {s: at_scale(resolve_preset("gdn-6:1@tiny"), s).d_model for s in SCALES if SCALES[s].n_layers == 24} == {
        "tiny": 32, "small": 256, "340m": 1024, "1.3b": 2048}
