"""Shared test fixtures: tiny layouts (d_model 32, a handful of layers) that build and run fast on CPU."""

from __future__ import annotations

import importlib.util

import pytest

from hyla.space.layout import Layout
from hyla.space.mixers import LINEAR_MIXERS


def tiny_layout(*layers: str, d_model: int = 32, vocab_size: int = 512, num_heads: int = 2,
                num_kv_heads: int | None = None, name: str = "test") -> Layout:
    """A small layout with the given compact layer strings (default: one GLA layer and one attention layer)."""
    return Layout(layers=layers or ("gla", "attn"), d_model=d_model, vocab_size=vocab_size, mlp_hidden=2 * d_model,
                  num_heads=num_heads, num_kv_heads=num_kv_heads, name=name)


def mixer_available(kind: str) -> bool:
    """Whether the torch module of mixer ``kind`` exists yet (helpers B/C add them one by one)."""
    from hyla.proxy_train.mixers import mixer_module

    return importlib.util.find_spec(mixer_module(kind)) is not None


def skip_if_missing(kind: str) -> None:
    if not mixer_available(kind):
        pytest.skip(f"mixer module for {kind!r} ({kind}.py) is not written yet")


@pytest.fixture
def attn_layout() -> Layout:
    """Two whole softmax-attention layers (GQA off)."""
    return tiny_layout("attn", "attn", name="attn-2")


@pytest.fixture(params=LINEAR_MIXERS)
def linear_kind(request: pytest.FixtureRequest) -> str:
    """Every linear mixer kind; skipped (with the reason) while its module is missing."""
    skip_if_missing(request.param)
    return request.param
