"""Every `MixerKind` holds everything about its kind (letter, colour, closed-form sizes, fla names), pure Python."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hyla.space.layout import ATTN, ATTN_COLOR, mixer_color
from hyla.space.mixer_kinds import LINEAR_MIXERS, MIXER_KINDS, FlaModel, MixerFormula


@pytest.mark.parametrize("name", LINEAR_MIXERS)
def test_kind_is_complete(name: str) -> None:
    kind = MIXER_KINDS[name]
    assert kind.name == name
    assert len(kind.letter) == 1 and kind.letter != "A" and len(kind.hw_letter) == 1
    assert re.fullmatch(r"#[0-9a-f]{6}", kind.color), kind.color
    assert isinstance(kind.formula(64), MixerFormula)
    fla = kind.fla_model
    assert isinstance(fla, FlaModel) and bool(fla.model_type) != bool(fla.missing)  # a model or why there is none
    assert set(fla.fields) | set(fla.fixed) <= set(kind.option_types)
    assert set(kind.fla_names) <= set(kind.option_types)
    assert mixer_color(name) == kind.color


def test_letters_and_colours_are_distinct() -> None:
    kinds = MIXER_KINDS.values()
    letters = ["A"] + [k.letter for k in kinds] + [k.hw_letter for k in kinds]
    assert len(set(letters)) == len(letters)
    colours = [ATTN_COLOR] + [k.color for k in kinds]
    assert len(set(colours)) == len(colours)
    assert mixer_color(ATTN) == ATTN_COLOR and mixer_color("nope") == "#999999"


def test_fla_names_rename_options() -> None:
    kwargs = MIXER_KINDS["mamba2"].fla_kwargs(64)
    assert kwargs["conv_kernel"] == 4 and "conv_size" not in kwargs
    assert MIXER_KINDS["gla"].fla_kwargs(64) == MIXER_KINDS["gla"].resolve_options(64, {})
    # the lower bound is fla's model option, not its layer's: resolved, but never handed to the layer
    for kind in ("hgrn", "hgrn2"):
        assert MIXER_KINDS[kind].resolve_options(64, {})["lower_bound"] is True
        assert "lower_bound" not in MIXER_KINDS[kind].fla_kwargs(64, {"lower_bound": False})


def test_space_imports_no_torch() -> None:
    code = "import sys, hyla.space; print(sorted(m for m in ('torch', 'hyla.proxy_train') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
