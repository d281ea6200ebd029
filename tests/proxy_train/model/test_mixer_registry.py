"""The mixer registry: every kind of ``hyla.space.mixer_kinds.MIXER_KINDS`` has a torch class registered under its name."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from hyla.space.layout import ATTN
from hyla.space.mixer_kinds import LINEAR_MIXERS, MIXER_KINDS

pytest.importorskip("fla.layers")

from hyla.proxy_train.model.mixers import HEADWISE, MIXER_NAMES, mixer_class, register_mixer
from hyla.proxy_train.model.mixers.common import FlaMixer


@pytest.mark.parametrize("name", LINEAR_MIXERS)
def test_every_kind_is_complete(name: str) -> None:
    """A registered class whose KIND is the kind's name, and the kind's formula, letter and colour."""
    import fla.layers

    cls = mixer_class(name)
    assert cls.KIND == name and issubclass(cls, FlaMixer)
    assert issubclass(cls, getattr(fla.layers, MIXER_KINDS[name].fla_class))
    kind = MIXER_KINDS[name]
    assert kind.formula(64).params > 0 and len(kind.letter) == 1 and re.fullmatch(r"#[0-9a-f]{6}", kind.color)


def test_attention_and_headwise_are_registered() -> None:
    from hyla.proxy_train.model.mixers.attention import SoftmaxAttention
    from hyla.proxy_train.model.mixers.headwise import HeadwiseHybrid

    assert MIXER_NAMES == (ATTN, *LINEAR_MIXERS)
    assert mixer_class(ATTN) is SoftmaxAttention and mixer_class(HEADWISE) is HeadwiseHybrid


def test_refusals() -> None:
    with pytest.raises(KeyError, match="unknown mixer 'nope'"):
        mixer_class("nope")
    with pytest.raises(ValueError, match="add its MixerKind"):
        register_mixer("nope")
    gla = mixer_class("gla")
    with pytest.raises(ValueError, match="already"):
        register_mixer("gla")(type("OtherGLA", (), {}))
    assert mixer_class("gla") is gla and gla.__name__ == "GLAMixer"  # the refused class did not replace it


def test_package_import_is_lazy() -> None:
    """Importing the package (and the registry) imports no mixer module, hence not fla."""
    code = ("import sys, hyla.proxy_train.model.mixers; "
            "print(sorted(m for m in sys.modules if m.startswith(('fla', 'hyla.proxy_train.model.mixers.'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['hyla.proxy_train.model.mixers.registry']"
