"""Shared test fixtures: tiny layouts (d_model 32, a handful of layers) that build and run fast on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyla.space.layout import Layout
from hyla.space.mixer_kinds import LINEAR_MIXERS

#: the repository's root (examples/, benchmarks/, pyproject.toml)
REPO = Path(__file__).resolve().parents[1]


def tiny_layout(*layers: str, d_model: int = 32, vocab_size: int = 512, num_heads: int = 2,
                num_kv_heads: int | None = None, name: str = "test") -> Layout:
    """A small layout with the given compact layer strings (default: one GLA layer and one attention layer)."""
    return Layout(layers=layers or ("gla", "attn"), d_model=d_model, vocab_size=vocab_size, mlp_hidden=2 * d_model,
                  num_heads=num_heads, num_kv_heads=num_kv_heads, name=name)


@pytest.fixture
def attn_layout() -> Layout:
    """Two whole softmax-attention layers (GQA off)."""
    return tiny_layout("attn", "attn", name="attn-2")


@pytest.fixture(params=LINEAR_MIXERS)
def linear_kind(request: pytest.FixtureRequest) -> str:
    """Every linear mixer kind (a missing or broken module fails the tests that use it)."""
    return request.param
