"""The search space: which layouts a study may propose, as Optuna parameters, and back.

A `SearchSpace` fixes the model shape (a scale from ``hyla.space.presets``) and lets the search choose, in this
order (each choice below is one categorical Optuna parameter; a choice with a single option is not suggested):

1. ``placement``: ``uniform_last`` / ``uniform_first`` / ``middle`` put one attention layer in each of ``n``
   equal groups of the ``N`` layers (last / first / centre layer: ``(j+1)N//n - 1``, ``jN//n``, ``(2j+1)N//(2n)``);
   ``free`` = one bit ``attn_XX`` per layer.
2. ``n_attention`` (``n`` directly) or ``ratio`` (``r`` of ``r:1``, 0 = pure linear); not for free. A ratio means
   what the presets mean (``presets.attention_indices``, ``last``): ``N // r`` groups of ``r`` layers from layer 0,
   attention at each group's last / first / middle (offset ``r // 2``) layer, the ``N mod r`` layers after the last
   group linear. ``ratios: [5]`` over 24 layers is ``gla-5:1`` = {4, 9, 14, 19}; ``n_attention: [4]`` is
   {5, 11, 17, 23}; they agree when ``r`` divides ``N``.
3. ``mixer`` (one kind for every linear layer) or ``mixer_XX`` per linear layer (``per_layer_mixer``).
4. ``attn_heads`` (softmax heads inside every linear layer, head-wise hybrid) or ``attn_heads_XX`` per linear
   layer (``headwise.per_layer``).
5. ``window`` of every softmax part, or ``window_XX`` per layer with softmax heads (``windows_per_layer``);
   only suggested when the layout has softmax heads.

``uniform_last`` with a ratio is the paper's (released checkpoints') placement: 6:1 over 24 layers -> {5, 11, 17,
23}; the ``literal`` convention (groups of ``r + 1``) is no placement here. ``layout_to_params`` inverts
``suggest_layout`` (for ``study.enqueue_trial``), so the paper grid and hand-made layouts can seed a study; a
layout outside the space is refused with its attention indices.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hyla.config import ConfigError, from_mapping, load_yaml, to_mapping
from hyla.space.cost import dtype_bytes, inference_memory, param_count
from hyla.space.layout import ATTN, LayerSpec, Layout
from hyla.space.mixer_kinds import LINEAR_MIXERS, get_mixer_kind
from hyla.space.presets import PAPER_RATIOS, attention_indices, get_scale

PLACEMENTS: tuple[str, ...] = ("uniform_last", "uniform_first", "middle", "free")


class TrialLike(Protocol):
    """What `suggest_layout` needs: an Optuna ``Trial``/``FrozenTrial``/``FixedTrial`` has it."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True, slots=True)
class HeadwiseSpace:
    """Softmax heads inside linear layers (head-wise hybrids).

    Attributes:
        heads: choices of ``attn_heads`` for linear layers (0 = pure linear layer).
        per_layer: each linear layer picks its own count instead of one for all.
    """

    heads: tuple[int, ...] = (0,)
    per_layer: bool = False


@dataclass(frozen=True, slots=True)
class Constraints:
    """Feasibility limits, reported as ``constraint_values`` (<= 0 feasible).

    Attributes:
        params_target: wanted parameter count (None = no parameter constraint).
        params_tolerance: allowed relative deviation from ``params_target``.
        params_kind: which count the target refers to.
        max_memory_bytes: KV + state bytes of one sequence at ``memory_context`` (None = no limit).
        memory_context: context length of the memory limit.
        dtype: model dtype of the memory limit.
    """

    params_target: int | None = None
    params_tolerance: float = 0.1
    params_kind: str = field(default="total", metadata={"choices": ("total", "non_embedding")})
    max_memory_bytes: int | None = None
    memory_context: int = 2048
    dtype: str = "bfloat16"


@dataclass(frozen=True)
class SearchSpace:
    """A family of layouts of one shape; see the module docstring for the parameters it defines.

    Attributes:
        scale: base shape (``tiny``, ``small``, ``340m``, ``1.3b``).
        n_layers: depth override (None = the scale's depth).
        mixers: linear mixer kinds to choose from.
        per_layer_mixer: each linear layer picks its mixer (else one for the whole model).
        ratios: ``r`` of ``r:1`` choices, 0 = pure linear; default 24, 12, 6, 3, 0 unless ``n_attention`` is set.
        n_attention: choices of the number of attention layers (instead of ``ratios``).
        placements: subset of ``PLACEMENTS``.
        headwise: softmax heads inside linear layers.
        windows: sliding-window choices of the softmax parts (None = full attention).
        windows_per_layer: each softmax layer picks its window.
        mixer_options: fixed option overrides per mixer kind (not searched), e.g. ``{gla: {num_heads: 2}}``.
        constraints: parameter target and memory limit.
    """

    scale: str = "tiny"
    n_layers: int | None = None
    mixers: tuple[str, ...] = ("gla",)
    per_layer_mixer: bool = False
    ratios: tuple[int, ...] | None = None
    n_attention: tuple[int, ...] | None = None
    placements: tuple[str, ...] = ("uniform_last",)
    headwise: HeadwiseSpace = HeadwiseSpace()
    windows: tuple[int | None, ...] = (None,)
    windows_per_layer: bool = False
    mixer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    constraints: Constraints = Constraints()

    def __post_init__(self) -> None:
        s = get_scale(self.scale)
        depth = self.depth
        if depth < 1:
            raise ConfigError(f"space n_layers: {self.n_layers} must be >= 1")
        _nonempty_unique("mixers", self.mixers)
        for m in self.mixers:
            get_mixer_kind(m)
        if self.ratios is not None and self.n_attention is not None:
            raise ConfigError("space ratios/n_attention: give one of them, not both")
        if self.ratios is None and self.n_attention is None:
            object.__setattr__(self, "ratios", (*PAPER_RATIOS, 0))
        if self.ratios is not None:
            _nonempty_unique("ratios", self.ratios)
            for r in self.ratios:
                if r < 0 or r > depth:
                    raise ConfigError(f"space ratios: {r} does not fit depth {depth}; allowed 0 (pure) or 1..{depth}")
        else:
            _nonempty_unique("n_attention", self.n_attention)
            for n in self.n_attention:
                if not 0 <= n <= depth:
                    raise ConfigError(f"space n_attention: {n} out of range; expected [0, {depth}]")
        _nonempty_unique("placements", self.placements)
        for p in self.placements:
            if p not in PLACEMENTS:
                raise ConfigError(f"space placements: unknown placement {p!r}; expected one of {', '.join(PLACEMENTS)}")
        if self.ratios is not None:
            for p in (p for p in self.placements if p != "free"):
                seen: dict[tuple[int, ...], int] = {}
                for r in self.ratios:
                    idx = ratio_indices(p, depth, r)
                    if idx in seen:
                        raise ConfigError(f"space ratios: {seen[idx]} and {r} both put attention at {list(idx)} "
                                          f"(placement {p}, depth {depth}); keep one")
                    seen[idx] = r
        _nonempty_unique("headwise.heads", self.headwise.heads)
        for k in self.headwise.heads:
            if not 0 <= k <= s.num_heads:
                raise ConfigError(f"space headwise.heads: {k} out of range; expected [0, {s.num_heads}] "
                                  f"(num_heads of scale {s.name})")
        _nonempty_unique("windows", self.windows)
        for w in self.windows:
            if w is not None and w < 1:
                raise ConfigError(f"space windows: {w} must be a positive token count or null")
        for kind, opts in self.mixer_options.items():
            if kind not in LINEAR_MIXERS:
                raise ConfigError(f"space mixer_options: unknown mixer {kind!r}; expected one of "
                                  f"{', '.join(LINEAR_MIXERS)}")
            if not isinstance(opts, Mapping):
                raise ConfigError(f"space mixer_options.{kind}: expected a mapping, got {type(opts).__name__}")
            get_mixer_kind(kind).resolve_options(s.d_model, dict(opts), where=f"space mixer_options.{kind}")
        c = self.constraints
        if c.params_target is not None and c.params_target < 1:
            raise ConfigError(f"space constraints.params_target: {c.params_target} must be positive")
        if c.params_tolerance < 0:
            raise ConfigError(f"space constraints.params_tolerance: {c.params_tolerance} must be >= 0")
        if c.max_memory_bytes is not None and c.max_memory_bytes < 1:
            raise ConfigError(f"space constraints.max_memory_bytes: {c.max_memory_bytes} must be positive")
        if c.memory_context < 1:
            raise ConfigError(f"space constraints.memory_context: {c.memory_context} must be >= 1")
        dtype_bytes(c.dtype)

    # -- views -------------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return self.n_layers if self.n_layers is not None else get_scale(self.scale).n_layers

    @property
    def count_param(self) -> str:
        """Name of the attention-count parameter: ``ratio`` or ``n_attention``."""
        return "ratio" if self.ratios is not None else "n_attention"

    @property
    def count_choices(self) -> tuple[int, ...]:
        return self.ratios if self.ratios is not None else self.n_attention  # type: ignore[return-value]

    def attention_for(self, placement: str, count: int) -> tuple[int, ...]:
        """Attention layers of a structured placement for a ``ratio``/``n_attention`` value."""
        by_ratio = self.ratios is not None
        return (ratio_indices if by_ratio else placement_indices)(placement, self.depth, count)

    def base_layout(self, layers: Sequence[LayerSpec | str]) -> Layout:
        s = get_scale(self.scale)
        return Layout(layers=tuple(layers), d_model=s.d_model, vocab_size=s.vocab_size, mlp_hidden=s.mlp_hidden,
                      num_heads=s.num_heads)

    # -- (de)serialisation -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "n_layers": self.n_layers, "mixers": list(self.mixers),
                "per_layer_mixer": self.per_layer_mixer,
                "ratios": None if self.ratios is None else list(self.ratios),
                "n_attention": None if self.n_attention is None else list(self.n_attention),
                "placements": list(self.placements), "headwise": to_mapping(self.headwise),
                "windows": list(self.windows), "windows_per_layer": self.windows_per_layer,
                "mixer_options": {k: dict(v) for k, v in sorted(self.mixer_options.items())},
                "constraints": to_mapping(self.constraints)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "space") -> SearchSpace:
        """Parse a mapping (unknown keys refused; errors name ``where`` and the field)."""
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        data = dict(data or {})
        if data.get("ratios") is not None and data.get("n_attention") is not None:
            raise ConfigError(f"{where}: give one of ratios/n_attention, not both")
        return from_mapping(cls, data, where)

    def key(self) -> str:
        """Stable hash (16 hex chars) of the space: a study may only be resumed with the same space."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _nonempty_unique(name: str, values: Sequence[Any] | None) -> None:
    if not values:
        raise ConfigError(f"space {name}: empty; expected at least one choice")
    if len(set(values)) != len(values):
        raise ConfigError(f"space {name}: {list(values)} has duplicates; expected distinct choices")


def load_space(path: str | Path) -> SearchSpace:
    """Read a search space YAML file."""
    return SearchSpace.from_dict(load_yaml(path), where=str(path))


# -- Optuna <-> Layout ---------------------------------------------------------------------------------------
def ratio_indices(placement: str, n_layers: int, ratio: int) -> tuple[int, ...]:
    """Attention layers of an ``r:1`` ratio (0 = none) under a structured placement: the presets' groups."""
    if placement not in PLACEMENTS[:3]:
        raise ConfigError(f"placement: {placement!r} has no fixed indices; expected one of {', '.join(PLACEMENTS[:3])}")
    return attention_indices(n_layers, ratio, "last", placement.removeprefix("uniform_")) if ratio else ()


def placement_indices(placement: str, n_layers: int, n_attn: int) -> tuple[int, ...]:
    """Attention layers of a structured placement (not ``free``) with ``n_attn`` of ``n_layers`` layers."""
    if n_attn == 0:
        return ()
    if placement == "uniform_last":
        return tuple((j + 1) * n_layers // n_attn - 1 for j in range(n_attn))
    if placement == "uniform_first":
        return tuple(j * n_layers // n_attn for j in range(n_attn))
    if placement == "middle":
        return tuple((2 * j + 1) * n_layers // (2 * n_attn) for j in range(n_attn))
    raise ConfigError(f"placement: {placement!r} has no fixed indices; expected one of {', '.join(PLACEMENTS[:3])}")


def _pick(trial: TrialLike, name: str, choices: Sequence[Any]) -> Any:
    """Suggest only real choices: a single option is fixed and never becomes a parameter."""
    return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, list(choices))


def suggest_layout(trial: TrialLike, space: SearchSpace) -> Layout:
    """Build a Layout from ``trial.suggest_categorical`` calls only (see the module docstring for the order)."""
    n = space.depth
    placement = _pick(trial, "placement", space.placements)
    if placement == "free":
        attn = {i for i in range(n) if _pick(trial, f"attn_{i:02d}", (False, True))}
    else:
        count = _pick(trial, space.count_param, space.count_choices)
        attn = set(space.attention_for(placement, count))
    linear = [i for i in range(n) if i not in attn]
    if space.per_layer_mixer:
        mixers = {i: _pick(trial, f"mixer_{i:02d}", space.mixers) for i in linear}
    else:
        m = _pick(trial, "mixer", space.mixers) if linear else None
        mixers = {i: m for i in linear}
    hw = space.headwise
    if hw.per_layer:
        heads = {i: _pick(trial, f"attn_heads_{i:02d}", hw.heads) for i in linear}
    else:
        k = _pick(trial, "attn_heads", hw.heads) if linear else 0
        heads = {i: k for i in linear}
    softmax = [i for i in range(n) if i in attn or heads[i]]
    if space.windows_per_layer:
        windows = {i: _pick(trial, f"window_{i:02d}", space.windows) for i in softmax}
    else:
        w = _pick(trial, "window", space.windows) if softmax else None
        windows = {i: w for i in softmax}
    layers = [LayerSpec(mixer=ATTN, window=windows[i]) if i in attn else
              LayerSpec(mixer=mixers[i], attn_heads=heads[i], window=windows.get(i),
                        options=space.mixer_options.get(mixers[i], {}))
              for i in range(n)]
    return space.base_layout(layers)


class _Replay:
    """A trial that answers from a param dict (to check `layout_to_params` without Optuna)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = params

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self.params[name]


def layout_to_params(layout: Layout, space: SearchSpace) -> dict[str, Any]:
    """The parameters that make `suggest_layout` rebuild ``layout`` (for ``study.enqueue_trial``).

    Raises:
        ConfigError: the layout is not in the space (the message names the first mismatch).
    """
    base = space.base_layout([ATTN] * space.depth)
    for f in ("n_layers", "d_model", "vocab_size", "mlp_hidden", "num_heads", "kv_heads", "rope_theta", "norm_eps"):
        if getattr(layout, f) != getattr(base, f):
            raise ConfigError(f"layout {layout.name or layout.key()} not in space: {f} {getattr(layout, f)} != "
                              f"{getattr(base, f)} of space scale {space.scale}")
    where = f"layout {layout.name or layout.key()} not in space"
    params: dict[str, Any] = {}
    attn = layout.attention_layers
    placement = None
    for p in sorted(space.placements, key=lambda p: p == "free"):  # structured placements first
        if p == "free":
            placement = p
            params.update({f"attn_{i:02d}": i in attn for i in range(space.depth)})
            break
        hit = [c for c in space.count_choices if space.attention_for(p, c) == attn]
        if hit:
            placement = p
            params[space.count_param] = hit[0]
            break
    if placement is None:
        raise ConfigError(f"{where}: attention at {list(attn)} matches no placement in {list(space.placements)} "
                          f"with {space.count_param} in {list(space.count_choices)}")
    params["placement"] = placement
    linear = [i for i in range(space.depth) if i not in attn]
    specs = layout.layers
    _collect(params, "mixer", {i: specs[i].mixer for i in linear}, space.mixers, space.per_layer_mixer, where)
    _collect(params, "attn_heads", {i: specs[i].attn_heads for i in linear}, space.headwise.heads,
             space.headwise.per_layer, where)
    softmax = [i for i in range(space.depth) if specs[i].has_softmax]
    _collect(params, "window", {i: specs[i].window for i in softmax}, space.windows, space.windows_per_layer, where)
    for i in linear:
        want = LayerSpec(mixer=specs[i].mixer, options=space.mixer_options.get(specs[i].mixer, {})).options
        if specs[i].options != want:
            raise ConfigError(f"{where}: layers[{i}].options {dict(specs[i].options)} != the space's fixed "
                              f"mixer_options {dict(want)}")
    params = {k: v for k, v in params.items() if _choices(k, space) is None or len(_choices(k, space)) > 1}
    rebuilt = suggest_layout(_Replay(params), space)
    if rebuilt.key() != layout.key():  # guards the two functions against drifting apart
        raise ConfigError(f"{where}: its parameters {params} rebuild a different layout")
    return params


def _collect(params: dict[str, Any], name: str, values: dict[int, Any], choices: Sequence[Any], per_layer: bool,
             where: str) -> None:
    for i, v in values.items():
        if v not in choices:
            raise ConfigError(f"{where}: layers[{i}] {name} {v!r} not in the space's choices {list(choices)}")
    if per_layer:
        params.update({f"{name}_{i:02d}": v for i, v in values.items()})
    elif values:
        distinct = set(values.values())
        if len(distinct) > 1:
            raise ConfigError(f"{where}: {name} differs between layers ({sorted(map(str, distinct))}) but the "
                              f"space picks one {name} for all layers")
        params[name] = distinct.pop()


def _choices(param: str, space: SearchSpace) -> tuple[Any, ...] | None:
    """Choices of a parameter name (None for the free-placement bits, which always have two)."""
    base = param.rsplit("_", 1)[0] if param[-2:].isdigit() else param
    return {"placement": space.placements, "ratio": space.ratios, "n_attention": space.n_attention,
            "mixer": space.mixers, "attn_heads": space.headwise.heads, "window": space.windows}.get(base)


def constraint_values(layout: Layout, space: SearchSpace) -> dict[str, float]:
    """Constraint values (<= 0 feasible), for ``trial.set_constraint``/constrained samplers.

    ``params``: ``|P - target| / target - tolerance``; ``memory``: ``(bytes - max) / max`` of KV + state at
    ``memory_context``. Only the constraints the space sets are returned.
    """
    c = space.constraints
    out: dict[str, float] = {}
    if c.params_target is not None:
        pc = param_count(layout)
        p = pc.total if c.params_kind == "total" else pc.non_embedding
        out["params"] = abs(p - c.params_target) / c.params_target - c.params_tolerance
    if c.max_memory_bytes is not None:
        mem = inference_memory(layout, c.memory_context, c.dtype).total_bytes
        out["memory"] = (mem - c.max_memory_bytes) / c.max_memory_bytes
    return out
