"""The `Layout`: one hybrid language model, layer by layer.

A Layout is the single object that flows through hyla: the search space produces it, the proxy trainer builds
a model from it, the search stores it with each trial and the analysis exports it. It is frozen and validated
on construction, round-trips through plain dicts / YAML, and has a stable content hash (`key()`).

Each layer is a `LayerSpec`:

- ``mixer="attn"``: the whole layer is softmax attention (``Layout.num_heads`` heads, optional window).
- ``mixer=<linear kind>`` (``gla``, ``hgrn``, ...): the layer is that linear-attention mixer, with ``options``
  overriding the kind's defaults (heads, expand ratios, short conv ...).
- ``mixer=<linear kind>, attn_heads=k``: a head-wise hybrid layer: ``k`` of the layer's ``num_heads`` attention
  heads are softmax attention (own KV cache, optional sliding window) running beside the linear mixer on the
  same input, outputs merged (see ``hyla.proxy_train.model.mixers.headwise``).

Compact per-layer strings are accepted everywhere a layer is: ``"gla"``, ``"attn"``, ``"attn@512"`` (window
512), ``"gla+a2"`` (GLA with 2 softmax heads), ``"gla+a2@256"``.

Terminal tables show a layout as one letter per layer (`Layout.layer_string`, e.g. ``gNNA``): ``A`` softmax
attention, a linear kind's capital letter (``hyla.space.mixer_kinds.MIXER_LETTERS``: ``G`` gla, ``N`` gdn ...), and the
lower-case letter for a head-wise layer of that kind (``g`` = gla + softmax heads; hgrn2, whose letter is ``2``,
uses ``h``). `letter_legend` explains the letters a table shows in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from hyla.config import ConfigError, check_keys, load_yaml, dump_yaml
from hyla.space.mixer_kinds import HEADWISE_LETTERS, LINEAR_MIXERS, MIXER_KINDS, MIXER_LETTERS, get_mixer_kind

ATTN = "attn"
#: Plot colour of softmax attention (red, it stands out); a linear kind's is `MixerKind.color`.
ATTN_COLOR = "#d62728"
ALL_MIXERS: tuple[str, ...] = (*LINEAR_MIXERS, ATTN)
_LAYER_RE = re.compile(r"^(?P<mixer>[a-z0-9_]+)(\+a(?P<heads>\d+))?(@(?P<window>\d+))?$")


def _freeze(options: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, Any], ...]:
    items = dict(options or {})
    return tuple(sorted(items.items()))


def mixer_color(mixer: str) -> str:
    """Plot colour of a layer's mixer (``attn`` or a linear kind); grey for an unknown name."""
    if mixer == ATTN:
        return ATTN_COLOR
    kind = MIXER_KINDS.get(mixer)
    return kind.color if kind else "#999999"


def letter_legend(strings: Iterable[str]) -> str:
    """One line explaining the letters used in ``strings`` (layer strings), e.g.
    ``layer letters: A attention, N gdn, n gdn + softmax heads (head-wise)``; ``""`` when none is a layer letter."""
    names = {"A": "attention"}
    for kind in LINEAR_MIXERS:
        names[MIXER_LETTERS[kind]] = kind
        names[HEADWISE_LETTERS[kind]] = f"{kind} + softmax heads (head-wise)"
    used = set("".join(strings))
    parts = [f"{letter} {name}" for letter, name in names.items() if letter in used]
    return "layer letters: " + ", ".join(parts) if parts else ""


@dataclass(frozen=True, kw_only=True, slots=True)
class LayerSpec:
    """One layer's token mixer.

    Attributes:
        mixer: a linear mixer kind (see ``hyla.space.mixer_kinds.LINEAR_MIXERS``) or ``"attn"``.
        attn_heads: for a linear mixer, how many of the layout's ``num_heads`` attention heads run softmax
            attention beside it (head-wise hybrid); 0 = pure linear layer. Ignored (must be 0) for ``"attn"``.
        window: sliding window of the softmax part in tokens (None = full causal attention).
        options: overrides of the linear mixer's default options, as sorted ``(name, value)`` pairs.
    """

    mixer: str
    attn_heads: int = 0
    window: int | None = None
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mixer not in ALL_MIXERS:
            raise ConfigError(f"layer mixer: unknown mixer {self.mixer!r}; expected one of {', '.join(ALL_MIXERS)}")
        object.__setattr__(self, "options", _freeze(self.options))
        if self.mixer == ATTN and self.attn_heads:
            raise ConfigError(f"layer attn_heads: {self.attn_heads} given for an 'attn' layer, which uses all heads; "
                              "leave it 0")
        if self.mixer == ATTN and self.options:
            raise ConfigError(f"layer options: {dict(self.options)} given for an 'attn' layer; attention is set by "
                              "the layout's num_heads/num_kv_heads")
        if self.attn_heads < 0:
            raise ConfigError(f"layer attn_heads: {self.attn_heads} is negative; expected 0 or more")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"layer window: {self.window} must be a positive token count or null")
        if self.window is not None and self.mixer != ATTN and not self.attn_heads:
            raise ConfigError("layer window: a window needs softmax heads (mixer 'attn' or attn_heads > 0)")
        if self.mixer != ATTN:
            get_mixer_kind(self.mixer).check_option_names(dict(self.options))

    # -- views -------------------------------------------------------------------------------------------------
    @property
    def is_attention(self) -> bool:
        """True for a whole softmax-attention layer."""
        return self.mixer == ATTN

    @property
    def has_softmax(self) -> bool:
        """True when any head of the layer is softmax attention (whole layer or head-wise)."""
        return self.mixer == ATTN or self.attn_heads > 0

    @property
    def letter(self) -> str:
        """One letter for diagrams: ``A`` attention, the mixer's letter (``G``), lower case when head-wise (``g``)."""
        if self.mixer == ATTN:
            return "A"
        return HEADWISE_LETTERS[self.mixer] if self.attn_heads else MIXER_LETTERS[self.mixer]

    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    # -- (de)serialisation ---------------------------------------------------------------------------------------
    def to_obj(self) -> str | dict[str, Any]:
        """Compact string when there are no options, else a dict."""
        if self.options:
            out: dict[str, Any] = {"mixer": self.mixer}
            if self.attn_heads:
                out["attn_heads"] = self.attn_heads
            if self.window is not None:
                out["window"] = self.window
            out["options"] = dict(self.options)
            return out
        s = self.mixer + (f"+a{self.attn_heads}" if self.attn_heads else "")
        return s + (f"@{self.window}" if self.window is not None else "")

    @classmethod
    def from_obj(cls, obj: str | Mapping[str, Any] | LayerSpec, where: str = "layer") -> LayerSpec:
        """Parse a compact string (``"gla+a2@256"``) or a dict with keys mixer/attn_heads/window/options."""
        if isinstance(obj, LayerSpec):
            return obj
        if isinstance(obj, str):
            m = _LAYER_RE.match(obj.strip())
            if not m:
                raise ConfigError(f"{where}: cannot parse {obj!r}; expected e.g. 'gla', 'attn', 'attn@512', "
                                  "'gla+a2', 'gla+a2@256'")
            return cls(mixer=m["mixer"], attn_heads=int(m["heads"] or 0),
                       window=int(m["window"]) if m["window"] else None)
        if isinstance(obj, Mapping):
            check_keys(obj, {"mixer", "attn_heads", "window", "options"}, where)
            if "mixer" not in obj:
                raise ConfigError(f"{where}: missing field 'mixer'")
            opts = obj.get("options") or {}
            if not isinstance(opts, Mapping):
                raise ConfigError(f"{where}.options: expected a mapping, got {type(opts).__name__}")
            return cls(mixer=obj["mixer"], attn_heads=int(obj.get("attn_heads") or 0),
                       window=obj.get("window"), options=opts)
        raise ConfigError(f"{where}: expected a string or mapping, got {type(obj).__name__}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Layout:
    """A hybrid LM: shape plus one `LayerSpec` per layer. Frozen, validated, hashable by content.

    Attributes:
        layers: one spec per layer (depth = ``len(layers)``).
        d_model: residual width.
        vocab_size: embedding rows; the LM head is untied.
        mlp_hidden: SwiGLU inner width (the paper's 340M uses 2816 at d_model 1024).
        num_heads: softmax-attention heads (whole attention layers and the head grid of head-wise layers).
        num_kv_heads: key/value heads of whole attention layers (GQA); None = num_heads.
        rope_theta: RoPE base of the softmax attention.
        norm_eps: RMSNorm epsilon.
        name: a label (e.g. the preset name); not part of ``key()``.
    """

    layers: tuple[LayerSpec, ...]
    d_model: int
    vocab_size: int
    mlp_hidden: int
    num_heads: int
    num_kv_heads: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    name: str = ""

    def __post_init__(self) -> None:
        layers = tuple(LayerSpec.from_obj(l, f"layers[{i}]") for i, l in enumerate(self.layers))
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ConfigError("layout layers: empty; expected at least one layer")
        for name in ("d_model", "vocab_size", "mlp_hidden", "num_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"layout {name}: {v!r} must be a positive integer")
        if self.d_model % self.num_heads:
            raise ConfigError(f"layout num_heads: {self.num_heads} does not divide d_model {self.d_model}; "
                              f"allowed: {_divisors(self.d_model)}")
        kv = self.kv_heads
        if kv < 1 or self.num_heads % kv:
            raise ConfigError(f"layout num_kv_heads: {self.num_kv_heads} must divide num_heads {self.num_heads}; "
                              f"allowed: {_divisors(self.num_heads)}")
        for i, spec in enumerate(layers):
            if spec.attn_heads > self.num_heads:
                raise ConfigError(f"layers[{i}].attn_heads: {spec.attn_heads} exceeds num_heads {self.num_heads}; "
                                  f"allowed range [0, {self.num_heads}]")
            if spec.mixer != ATTN:
                get_mixer_kind(spec.mixer).resolve_options(self.d_model, dict(spec.options), where=f"layers[{i}]")
        self.lower_bound_shape()  # bounded layers must agree on the bound's width

    # -- derived views ----------------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """0-based indices of whole softmax-attention layers."""
        return tuple(i for i, s in enumerate(self.layers) if s.is_attention)

    @property
    def attention_share(self) -> float:
        """Fraction of all heads (whole layers count num_heads each) that are softmax attention."""
        heads = sum(self.num_heads if s.is_attention else s.attn_heads for s in self.layers)
        return heads / (self.num_heads * self.n_layers)

    @property
    def linear_mixers(self) -> tuple[str, ...]:
        """Distinct linear mixer kinds used, in order of first use."""
        return tuple(dict.fromkeys(s.mixer for s in self.layers if s.mixer != ATTN))

    def layer_string(self, group: int = 0) -> str:
        """Per-layer letters (`LayerSpec.letter`), e.g. ``GGGGGA gGGGGA``; ``group`` > 0 inserts a space every
        ``group`` layers. `letter_legend` explains them."""
        letters = "".join(s.letter for s in self.layers)
        if group > 0:
            letters = " ".join(letters[i:i + group] for i in range(0, len(letters), group))
        return letters

    def mixer_options(self, index: int) -> dict[str, Any]:
        """The fully resolved options (defaults + overrides) of layer ``index``'s linear mixer."""
        spec = self.layers[index]
        if spec.mixer == ATTN:
            return {}
        return get_mixer_kind(spec.mixer).resolve_options(self.d_model, dict(spec.options))

    def _bound_widths(self) -> dict[int, int]:
        """Bounded layer -> the width of its forget-gate lower bound (`MixerKind.lower_bound_width`)."""
        widths = {}
        for i, spec in enumerate(self.layers):
            width_of = None if spec.mixer == ATTN else get_mixer_kind(spec.mixer).lower_bound_width
            if width_of is not None and (opts := self.mixer_options(i))["lower_bound"]:
                widths[i] = width_of(self.d_model, opts)
        return widths

    def bounded_layers(self) -> tuple[int, ...]:
        """Layers whose forget gate takes the model's learned lower bound (HGRN/HGRN-2 with ``lower_bound`` on;
        see `MixerKind.lower_bound_width`)."""
        return tuple(self._bound_widths())

    def lower_bound_shape(self) -> tuple[int, int] | None:
        """Shape ``(n_layers, width)`` of the model-level lower-bound table (fla's ``lower_bounds``: one row per
        layer, attention layers included), or None when no layer is bounded.

        Raises:
            ConfigError: bounded layers with different gate widths (one table cannot serve them).
        """
        widths = self._bound_widths()
        if len(set(widths.values())) > 1:
            raise ConfigError(f"layout layers: the forget-gate lower bounds of layers {sorted(widths)} have widths "
                              f"{sorted(set(widths.values()))}; one model-level table needs one width (set "
                              "options.lower_bound: false on some, or the same gate width)")
        return (self.n_layers, next(iter(widths.values()))) if widths else None

    def with_layers(self, layers: Iterable[LayerSpec | str | Mapping[str, Any]], name: str = "") -> Layout:
        return replace(self, layers=tuple(layers), name=name)

    # -- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "layers":
                v = [s.to_obj() for s in v]
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "layout") -> Layout:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)}
        check_keys(data, allowed, where)
        for req in ("layers", "d_model", "vocab_size", "mlp_hidden", "num_heads"):
            if req not in data:
                raise ConfigError(f"{where}: missing field {req!r}")
        if not isinstance(data["layers"], (list, tuple)):
            raise ConfigError(f"{where}.layers: expected a list, got {type(data['layers']).__name__}")
        return cls(**{k: (tuple(v) if k == "layers" else v) for k, v in data.items()})

    def key(self) -> str:
        """Stable content hash (16 hex chars) of everything that defines the model; ``name`` excluded."""
        d = self.to_dict()
        d.pop("name")
        d["layers"] = [LayerSpec.from_obj(l).to_obj() for l in d["layers"]]
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def dump(self, path: str | Path) -> None:
        """Write the layout as YAML."""
        dump_yaml(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> Layout:
        """Read a layout YAML file (errors name the file and the field)."""
        return cls.from_dict(load_yaml(path), where=str(path))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
