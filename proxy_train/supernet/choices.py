"""What a supernet must hold and how its training samples: the layer specs a search space can produce, per layer.

`layer_choices(space)` lists, for every layer, each `LayerSpec` that some layout of the space puts there (whole
attention with each window where a placement allows attention; every mixer kind, with each head-wise head count and
window, where a placement allows a linear layer). A supernet builds exactly these paths and nothing else.

A `Sampler` draws one layout's layer specs from a seeded generator:

- `SpaceSampler`: the study's own `SearchSpace`, by replaying `suggest_layout` against a trial that answers every
  categorical uniformly at random (``free`` placement: each layer is attention with probability 1/2, as PostNAS's
  supernet samples). The supernet thus trains on the distribution the search will ask about.
- `LayerSampler`: independent per-layer choices from explicit options (the placement command: a trained model's
  own shape, which matches no scale of a `SearchSpace`), attention with probability ``p_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from hyla.config import ConfigError
from hyla.space.layout import ATTN, LayerSpec, Layout
from hyla.space.search_space import SearchSpace, suggest_layout

#: per layer, the specs a supernet holds a path for
Choices = tuple[tuple[LayerSpec, ...], ...]


def layer_choices(space: SearchSpace) -> Choices:
    """Per layer, every spec some layout of ``space`` puts there (attention specs first, then linear ones)."""
    n = space.depth
    if "free" in space.placements:
        can_attend, can_be_linear = set(range(n)), set(range(n))
    else:
        sets = [set(space.attention_for(p, c)) for p in space.placements for c in space.count_choices]
        can_attend = set().union(*sets)
        can_be_linear = {i for i in range(n) if any(i not in s for s in sets)}
    attention = [LayerSpec(mixer=ATTN, window=w) for w in space.windows]
    linear = [LayerSpec(mixer=m, attn_heads=k, window=w if k else None, options=space.mixer_options.get(m, {}))
              for m in space.mixers for k in space.headwise.heads for w in (space.windows if k else (None,))]
    return tuple(tuple((attention if i in can_attend else []) + (linear if i in can_be_linear else []))
                 for i in range(n))


class Sampler(Protocol):
    """Draws one layout's layer specs; ``describe()`` is what enters a supernet's cache key."""

    def __call__(self, rng: np.random.Generator) -> tuple[LayerSpec, ...]: ...

    def describe(self) -> dict[str, Any]: ...


class _RandomTrial:
    """A trial whose every categorical is drawn uniformly by ``rng`` (what `suggest_layout` asks)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return choices[int(self.rng.integers(len(choices)))]


class SpaceSampler:
    """Layouts of ``space``, every Optuna parameter uniform (module docstring)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, rng: np.random.Generator) -> tuple[LayerSpec, ...]:
        return suggest_layout(_RandomTrial(rng), self.space).layers

    def describe(self) -> dict[str, Any]:
        return {"space": self.space.to_dict()}


class LayerSampler:
    """Each layer independently: attention (its first attention choice) with probability ``p_attention`` where the
    layer offers one, else one of its other choices uniformly."""

    def __init__(self, choices: Choices, p_attention: float = 0.5) -> None:
        if not 0.0 <= p_attention <= 1.0:
            raise ConfigError(f"supernet sampler p_attention: {p_attention} must be in [0, 1]")
        self.choices, self.p_attention = choices, p_attention
        for i, options in enumerate(choices):
            if not options:
                raise ConfigError(f"supernet sampler: layer {i} has no choice")

    def __call__(self, rng: np.random.Generator) -> tuple[LayerSpec, ...]:
        out = []
        for options in self.choices:
            attn = [s for s in options if s.is_attention]
            rest = [s for s in options if not s.is_attention]
            if attn and (not rest or rng.random() < self.p_attention):
                out.append(attn[int(rng.integers(len(attn)))])
            else:
                out.append(rest[int(rng.integers(len(rest)))])
        return tuple(out)

    def describe(self) -> dict[str, Any]:
        return {"choices": [[s.to_obj() for s in c] for c in self.choices], "p_attention": self.p_attention}


def check_in_choices(layers: Sequence[LayerSpec], choices: Choices, where: str = "layout") -> None:
    """ConfigError naming the first layer whose spec the supernet holds no path for."""
    if len(layers) != len(choices):
        raise ConfigError(f"{where}: {len(layers)} layers; the supernet has {len(choices)}")
    for i, (spec, options) in enumerate(zip(layers, choices)):
        if spec not in options:
            raise ConfigError(f"{where}: layers[{i}] {spec.to_obj()!r} is not in the supernet's choices for that "
                              f"layer ({', '.join(str(s.to_obj()) for s in options)})")


def same_shape(a: Layout, b: Layout) -> bool:
    """Whether two layouts share every field but their layers and name (a supernet serves one shape)."""
    fields_ = ("d_model", "vocab_size", "mlp_hidden", "num_heads", "kv_heads", "rope_theta", "norm_eps", "n_layers")
    return all(getattr(a, f) == getattr(b, f) for f in fields_)
