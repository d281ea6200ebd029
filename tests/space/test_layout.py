"""Layer letters of `Layout.layer_string` and their one-line legend."""

from __future__ import annotations

from hyla.space.layout import LayerSpec, Layout, letter_legend
from hyla.space.mixer_kinds import LINEAR_MIXERS


def _layout(layers: list[str]) -> Layout:
    return Layout(layers=layers, d_model=64, vocab_size=512, mlp_hidden=128, num_heads=2)


def test_headwise_layers_show_their_mixer_one_letter_per_layer() -> None:
    whole = {k: LayerSpec(mixer=k).letter for k in LINEAR_MIXERS}
    heads = {k: LayerSpec(mixer=k, attn_heads=1).letter for k in LINEAR_MIXERS}
    assert whole["gla"] == "G" and heads["gla"] == "g" and heads["gdn"] == "n" and heads["hgrn2"] == "h"
    letters = ["A", *whole.values(), *heads.values()]
    assert all(len(c) == 1 for c in letters) and len(set(letters)) == len(letters)  # unambiguous
    lay = _layout(["gdn+a1", "gdn", "hgrn2+a1@64", "attn@128"])
    assert lay.layer_string() == "nNhA" and lay.layer_string(group=2) == "nN hA"


def test_letter_legend_lists_only_the_letters_shown() -> None:
    assert letter_legend(["nNNA", "NNNN"]) == ("layer letters: A attention, N gdn, n gdn + softmax heads "
                                              "(head-wise)")
    assert letter_legend(["GG GA"]) == "layer letters: A attention, G gla"
    assert letter_legend(["?", ""]) == ""
