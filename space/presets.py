"""Model scales and the paper's grid of uniform hybrids (arXiv 2507.06457), with named presets.

Preset names (``resolve_preset``)::

    <mixer>-<r>:1[:<convention>][@<scale>]    e.g. gdn-6:1@340m, gla-3:1@tiny, gla-6:1, gla-6:1:literal@small
    <mixer>-pure[@<scale>]                    all layers linear, e.g. gla-pure@tiny
    <mixer>-at<i>,<j>,...[@<scale>]           attention exactly at 0-based layers i, j, ... e.g. gla-at3,11@tiny
    transformer[@<scale>]                     all layers softmax attention

``<mixer>`` is a linear kind (``hyla.space.mixer_kinds.LINEAR_MIXERS``), ``<scale>`` one of ``SCALES`` (default 340m).

Placement conventions for a ratio ``r:1`` over ``n`` layers (0-based indices):

- ``last`` (default; the released checkpoints): one attention layer per group of ``r``, last in the group:
  ``{i : (i + 1) % r == 0}``. Over 24 layers: 24:1 -> {23}; 12:1 -> {11, 23}; 6:1 -> {5, 11, 17, 23};
  3:1 -> {2, 5, 8, 11, 14, 17, 20, 23}. Layers after the last full group (when r does not divide n) stay linear.
- ``literal`` (the paper's prose, "r linear layers then 1 attention"): groups of ``r + 1``, attention last:
  ``{i : (i + 1) % (r + 1) == 0}`` = r, 2r+1, 3r+2, ... Over 24 layers: 24:1 -> none (does not fit, an error);
  12:1 -> {12}; 6:1 -> {6, 13, 20}; 3:1 -> {3, 7, 11, 15, 19, 23}. Note the attention share differs from ``last``.

A ratio that yields no attention layer at the given depth is refused (use ``<mixer>-pure`` for none).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hyla.config import ConfigError
from hyla.space.layout import ATTN, LayerSpec, Layout
from hyla.space.mixer_kinds import LINEAR_MIXERS, PAPER_MIXERS, get_mixer_kind


@dataclass(frozen=True, slots=True)
class Scale:
    """The shape shared by every layout of one model size.

    Attributes:
        name: preset key (``tiny``, ``small``, ``340m``, ``1.3b``).
        n_layers: depth.
        d_model: residual width.
        num_heads: softmax-attention heads (head dim = d_model / num_heads).
        mlp_hidden: SwiGLU inner width.
        vocab_size: tokenizer vocabulary (untied embedding and head).
    """

    name: str
    n_layers: int
    d_model: int
    num_heads: int
    mlp_hidden: int
    vocab_size: int

    def layout(self, layers: Iterable[LayerSpec | str], name: str = "") -> Layout:
        """A Layout of this shape with the given per-layer specs (depth may differ from ``n_layers``)."""
        return Layout(layers=tuple(layers), d_model=self.d_model, vocab_size=self.vocab_size,
                      mlp_hidden=self.mlp_hidden, num_heads=self.num_heads, name=name)


SCALES: dict[str, Scale] = {s.name: s for s in [
    Scale("tiny", 24, 32, 2, 64, 512),  # CPU tests and smoke runs
    Scale("mini", 4, 64, 2, 128, 512),  # the CPU quickstart: shallow and wide enough to learn recall in minutes
    Scale("small", 24, 256, 4, 704, 512),  # GPU proxies
    Scale("340m", 24, 1024, 16, 2816, 32000),  # the paper's 340M
    Scale("1.3b", 24, 2048, 32, 5632, 32000),  # the paper's 1.3B
]}
#: r of the paper's r:1 ratios
PAPER_RATIOS: tuple[int, ...] = (24, 12, 6, 3)
CONVENTIONS: tuple[str, ...] = ("last", "literal")
#: where the attention layer sits in each group of a ratio (`attention_indices`)
POSITIONS: tuple[str, ...] = ("last", "first", "middle")
DEFAULT_SCALE = "340m"

_NAME_RE = re.compile(r"^(?P<body>[^@]+?)(@(?P<scale>[^@]+))?$")
_RATIO_RE = re.compile(r"^(?P<mixer>[a-z0-9_]+)-(?P<r>\d+):1(:(?P<conv>[a-z]+))?$")
_PURE_RE = re.compile(r"^(?P<mixer>[a-z0-9_]+)-pure$")
_AT_RE = re.compile(r"^(?P<mixer>[a-z0-9_]+)-at(?P<idx>\d+(,\d+)*)$")


def get_scale(name: str | Scale) -> Scale:
    """Look up a scale by name; an unknown name raises a ConfigError listing the known ones."""
    if isinstance(name, Scale):
        return name
    try:
        return SCALES[str(name).lower()]
    except KeyError:
        raise ConfigError(f"scale: unknown scale {name!r}; expected one of {', '.join(SCALES)}") from None


def _check_mixer(mixer: str) -> str:
    if mixer not in LINEAR_MIXERS:
        raise ConfigError(f"preset mixer: unknown mixer {mixer!r}; expected one of {', '.join(LINEAR_MIXERS)} "
                          "(or 'transformer')")
    return mixer


def attention_indices(n_layers: int, ratio: int, convention: str = "last", position: str = "last") -> tuple[int, ...]:
    """0-based attention layers of an ``r:1`` hybrid over ``n_layers`` layers (see the module docstring).

    The single meaning of a ratio in hyla (presets and the search space's ``ratios``). ``position`` moves the
    attention layer within each group: ``last`` (the conventions above), ``first`` or ``middle`` (offset
    ``group // 2``); the search space's ``uniform_first`` / ``middle`` placements use it.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"placement convention: unknown {convention!r}; expected one of {', '.join(CONVENTIONS)}")
    if position not in POSITIONS:
        raise ConfigError(f"ratio position: unknown {position!r}; expected one of {', '.join(POSITIONS)}")
    if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 1:
        raise ConfigError(f"ratio: {ratio!r} must be a positive integer r of r:1 (use 'pure' for no attention)")
    group = ratio if convention == "last" else ratio + 1
    offset = {"last": group - 1, "first": 0, "middle": group // 2}[position]
    idx = tuple(j * group + offset for j in range(n_layers // group))
    if not idx:
        raise ConfigError(f"ratio: {ratio}:1 ({convention}) does not fit depth {n_layers}: no attention layer; "
                          f"expected r <= {n_layers if convention == 'last' else n_layers - 1}")
    return idx


def attention_at(layout_or_base: Layout | Scale | str, indices: Iterable[int], name: str = "") -> Layout:
    """Make the layers at ``indices`` whole softmax-attention layers, keeping the others.

    Args:
        layout_or_base: a Layout, or a preset name (``gla-pure@tiny``) to start from.
        indices: 0-based layer indices; each must lie in ``[0, n_layers)``.
        name: the new layout's name.
    """
    base = resolve_preset(layout_or_base) if isinstance(layout_or_base, str) else layout_or_base
    if isinstance(base, Scale):
        raise ConfigError("attention_at: expected a Layout or preset name to take the other layers from, got a "
                          f"Scale ({base.name}); use e.g. '<mixer>-pure@{base.name}'")
    idx = sorted(set(indices))
    for i in idx:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < base.n_layers:
            raise ConfigError(f"attention index {i} out of range; expected [0, {base.n_layers})")
    layers = [LayerSpec(mixer=ATTN) if i in idx else spec for i, spec in enumerate(base.layers)]
    return base.with_layers(layers, name=name)


def hybrid(mixer: str, ratio: int | None, scale: str | Scale = DEFAULT_SCALE, convention: str = "last") -> Layout:
    """A uniform ``ratio:1`` hybrid of ``mixer`` and softmax attention; ``ratio`` None or 0 = pure linear."""
    s = get_scale(scale)
    _check_mixer(mixer)
    if not ratio:
        return s.layout([mixer] * s.n_layers, name=f"{mixer}-pure@{s.name}")
    idx = set(attention_indices(s.n_layers, ratio, convention))
    suffix = "" if convention == "last" else f":{convention}"
    return s.layout([ATTN if i in idx else mixer for i in range(s.n_layers)],
                    name=f"{mixer}-{ratio}:1{suffix}@{s.name}")


def transformer(scale: str | Scale = DEFAULT_SCALE) -> Layout:
    """All layers softmax attention."""
    s = get_scale(scale)
    return s.layout([ATTN] * s.n_layers, name=f"transformer@{s.name}")


def paper_grid(scale: str | Scale = DEFAULT_SCALE, convention: str = "last") -> list[Layout]:
    """The paper's 31 layouts: 6 mixers x {24:1, 12:1, 6:1, 3:1, pure} + the Transformer.

    A ratio that leaves no attention layer at the scale's depth is skipped: with ``convention="literal"`` 24:1
    over 24 layers (24 linear layers then the attention layer would be layer 25), so 25 layouts at depth 24;
    at the 4-layer ``mini`` scale every ratio but 3:1 (13 layouts).
    """
    s = get_scale(scale)
    group = 1 if convention == "literal" else 0  # literal groups are r + 1 layers
    ratios = [r for r in PAPER_RATIOS if r + group <= s.n_layers]
    out = [hybrid(m, r, s, convention) for m in PAPER_MIXERS for r in (*ratios, None)]
    return out + [transformer(s)]


def at_scale(layout: Layout, scale: str | Scale, name: str | None = None) -> Layout:
    """The layout's pattern at another scale's shape: how a proxy winner becomes a 340M / 1.3B full run.

    Kept per layer: the mixer kind, whole softmax-attention layers, windows, and the mixer options that are not
    width-derived (expand ratios, short conv, gate rank ...). From ``scale``: d_model, num_heads, mlp_hidden,
    vocab_size, and the width-derived options (``MixerKind.width_options``: heads, head dims, state sizes) at
    the new width's defaults. Head-wise softmax heads and ``num_kv_heads`` keep their share of ``num_heads``
    (``k * H_new / H_old``, which must be whole). ``rope_theta`` and ``norm_eps`` are kept.

    Depth: the layers repeat as a period up to the scale's depth. At the same depth (the paper's case, e.g.
    ``tiny`` or ``small`` to ``340m``, all 24 layers) this is layer by layer. From the 4-layer ``mini`` scale to
    24 layers the 4 layers repeat 6 times, so the ratio, the attention share and which mixer follows which are
    kept: ``NNNA`` becomes attention at 3, 7, ..., 23 (= ``gdn-4:1@340m``); ``NNAN`` (the ``middle`` placement)
    becomes 2, 6, ..., 22. Stretching instead would stack the attention layers in one block. A depth that does
    not divide the scale's depth is refused.

    Args:
        layout: the source layout (any scale).
        scale: the target scale (name or `Scale`).
        name: the new layout's name; default ``"<source name or key> at <scale>"``.

    Raises:
        ConfigError: depth or head counts that cannot be carried (one line naming the field).
    """
    s = get_scale(scale)
    n = layout.n_layers
    if s.n_layers % n:
        raise ConfigError(f"n_layers: depth {n} of layout {layout.name or layout.key()} does not divide depth "
                          f"{s.n_layers} of scale {s.name}; expected one of {_divisor_list(s.n_layers)} (the layers "
                          "repeat as a period)")

    def heads(k: int, what: str) -> int:
        scaled = k * s.num_heads / layout.num_heads
        if not scaled.is_integer():
            raise ConfigError(f"{what}: {k} of {layout.num_heads} heads cannot keep its share at scale {s.name} "
                              f"({s.num_heads} heads: {k} x {s.num_heads}/{layout.num_heads} = {scaled:g}); expected a "
                              f"multiple of {layout.num_heads // math.gcd(layout.num_heads, s.num_heads)}")
        return int(scaled)

    period = []
    for i, spec in enumerate(layout.layers):
        opts = {}
        if not spec.is_attention:
            drop = get_mixer_kind(spec.mixer).width_options
            opts = {k: v for k, v in spec.options if k not in drop}
        period.append(LayerSpec(mixer=spec.mixer, attn_heads=heads(spec.attn_heads, f"layers[{i}].attn_heads"),
                                window=spec.window, options=opts))
    kv = None if layout.num_kv_heads is None else heads(layout.num_kv_heads, "num_kv_heads")
    label = name if name is not None else f"{layout.name or layout.key()} at {s.name}"
    try:
        return Layout(layers=tuple(period * (s.n_layers // n)), d_model=s.d_model, vocab_size=s.vocab_size,
                      mlp_hidden=s.mlp_hidden, num_heads=s.num_heads, num_kv_heads=kv, rope_theta=layout.rope_theta,
                      norm_eps=layout.norm_eps, name=label)
    except ConfigError as e:  # a kept option that does not fit the new width (e.g. n_groups vs heads)
        raise ConfigError(f"at scale {s.name}: {e}") from None


def _divisor_list(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def resolve_preset(name: str, default_scale: str = DEFAULT_SCALE) -> Layout:
    """Parse a preset name (syntax in the module docstring) into its Layout."""
    text = str(name).strip().lower()
    m = _NAME_RE.match(text)
    if not m or not text:
        raise ConfigError(f"preset: cannot parse {name!r}; expected e.g. 'gdn-6:1@340m', 'gla-pure@tiny', "
                          "'gla-6:1:literal@small', 'gla-at3,11@tiny', 'transformer@1.3b'")
    body, scale = m["body"], get_scale(m["scale"] or default_scale)
    if body == "transformer":
        return transformer(scale)
    if r := _RATIO_RE.match(body):
        conv = r["conv"] or "last"
        if conv not in CONVENTIONS:
            raise ConfigError(f"preset {name!r}: unknown placement convention {conv!r}; "
                              f"expected one of {', '.join(CONVENTIONS)}")
        ratio = int(r["r"])
        if ratio < 1:
            raise ConfigError(f"preset {name!r}: ratio {ratio}:1 must have r >= 1 (use '<mixer>-pure')")
        return hybrid(_check_mixer(r["mixer"]), ratio, scale, conv)
    if p := _PURE_RE.match(body):
        return hybrid(_check_mixer(p["mixer"]), None, scale)
    if a := _AT_RE.match(body):
        base = hybrid(_check_mixer(a["mixer"]), None, scale)
        return attention_at(base, [int(i) for i in a["idx"].split(",")], name=f"{body}@{scale.name}")
    head = body.split("-", 1)[0]
    if head not in LINEAR_MIXERS:
        _check_mixer(head)  # names the unknown mixer
    raise ConfigError(f"preset {name!r}: cannot parse {body!r}; expected '<mixer>-<r>:1[:last|:literal]', "
                      "'<mixer>-pure', '<mixer>-at<i>,<j>' or 'transformer' (ratios in the paper: "
                      f"{', '.join(f'{r}:1' for r in PAPER_RATIOS)})")


def load_layout(arg: str | Path | Layout, default_scale: str = DEFAULT_SCALE) -> Layout:
    """A Layout from a preset name or a layout YAML file (``*.yaml``/``*.yml`` or any existing file)."""
    if isinstance(arg, Layout):
        return arg
    text = str(arg)
    p = Path(text)
    if p.suffix.lower() in (".yaml", ".yml") or p.is_file():
        try:
            layout = Layout.load(p)
        except ConfigError as e:  # Layout's own checks (heads, mixers) do not know the file: name it
            raise (e if str(e).startswith(text) else ConfigError(f"{text}: {e}")) from None
        return layout if layout.name else layout.with_layers(layout.layers, name=p.stem)
    return resolve_preset(text, default_scale)
