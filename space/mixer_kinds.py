"""Linear mixer kinds: everything about a kind in one `MixerKind` (name, letter, colour, fla layer, default
options by width, option validation, closed-form sizes, fla's own model).

This module is pure Python (no torch) so that the search space and cost accounting are cheap to import.
The torch modules live in ``hyla.proxy_train.model.mixers``, one module per kind named after it, whose class registers
itself with ``@register_mixer("<name>")``; every kind here wraps the flash-linear-attention (fla) layer named in
``fla_class`` and its options are that layer's constructor arguments (``hidden_size``/``layer_idx``/``mode`` are
filled in by hyla).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hyla.config import ConfigError, did_you_mean


#: Options that hyla's model reads instead of fla's layer constructor (fla keeps them in its model config).
MODEL_OPTIONS: tuple[str, ...] = ("lower_bound",)


def _heads(d_model: int, per: int) -> int:
    return max(1, d_model // per)


@dataclass(frozen=True, slots=True)
class FlaModel:
    """fla's own model for a layout whose linear layers are all of one kind (`hyla analysis export`'s ``fla/``).

    Attributes:
        model_type: fla's ``model_type`` ("" when fla has no model for hyla's blocks of this kind).
        fields: hyla option -> fla config field.
        fixed: options that are no config field of fla's model: it always builds its layer with this value.
        missing: why fla cannot express the kind ("" when ``model_type`` is set).
    """

    model_type: str = ""
    fields: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    missing: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MixerKind:
    """One linear mixer kind: everything hyla knows about it without torch.

    Attributes:
        name: registry key (``gla``, ``gdn`` ...); the torch class is ``@register_mixer(name)`` in
            ``hyla.proxy_train.model.mixers.<name>``.
        letter: one letter for layer diagrams (a whole layer of this kind).
        color: plot colour of the kind (report diagrams), ``#rrggbb``.
        fla_class: the fla layer class (in ``fla.layers``) whose parameters hyla's module owns.
        defaults: options at a given d_model (scaled like the paper's 340M configs).
        option_types: every option that may be overridden, with its type.
        closed_form: exact sizes of the fla layer from d_model and the resolved options (see `formula`).
        check: extra validation of resolved options; returns an error text or None.
        width_options: options whose defaults are derived from d_model (heads, head dims, state sizes); a layout
            carried to another width (``hyla.space.presets.at_scale``) drops their overrides and takes the new
            width's defaults. All other options (expand ratios, short conv, gate rank ...) are carried as they are.
        headwise_letter: the letter of a head-wise layer of this kind (softmax heads beside it); "" = ``letter``
            in lower case.
        fla_names: hyla option -> fla constructor argument, where the names differ (Mamba2's ``conv_kernel``).
        fla_model: fla's model config for layouts of this kind (export).
        lower_bound_width: kinds whose fla *model* gives every layer a learned forget-gate lower bound (HGRN,
            HGRN-2): the width of a layer's bound from d_model and the resolved options. Such a kind has the
            option ``lower_bound`` (default True), which hyla's model reads (`MODEL_OPTIONS`), not fla's layer.
    """

    name: str
    letter: str
    color: str
    fla_class: str
    defaults: Callable[[int], dict[str, Any]]
    option_types: dict[str, type]
    closed_form: Callable[[int, dict[str, Any]], MixerFormula]
    check: Callable[[int, dict[str, Any]], str | None] = lambda d, o: None
    width_options: tuple[str, ...] = ()
    headwise_letter: str = ""
    fla_names: dict[str, str] = field(default_factory=dict)
    fla_model: FlaModel = field(default_factory=FlaModel)
    lower_bound_width: Callable[[int, dict[str, Any]], int] | None = None

    @property
    def hw_letter(self) -> str:
        """The letter of a head-wise layer of this kind (``headwise_letter`` or ``letter`` in lower case)."""
        return self.headwise_letter or self.letter.lower()

    def check_option_names(self, options: dict[str, Any]) -> None:
        for key in options:
            if key not in self.option_types:
                raise ConfigError(f"{self.name} options: unknown option {key!r}"
                                  f"{did_you_mean(key, self.option_types)}; "
                                  f"allowed: {', '.join(sorted(self.option_types))}")

    def resolve_options(self, d_model: int, overrides: dict[str, Any], where: str = "layer") -> dict[str, Any]:
        """Defaults at ``d_model`` updated by ``overrides``, type-checked and validated."""
        self.check_option_names(overrides)
        opts = {**self.defaults(d_model), **overrides}
        for key, value in overrides.items():
            tp = self.option_types[key]
            ok = isinstance(value, tp) and not (tp in (int, float) and isinstance(value, bool))
            if tp is float and isinstance(value, int) and not isinstance(value, bool):
                ok, opts[key] = True, float(value)
            if not ok:
                raise ConfigError(f"{where}.options.{key}: {value!r} must be of type {tp.__name__}")
        err = self.check(d_model, opts)
        if err:
            raise ConfigError(f"{where}.options: {self.name} at d_model {d_model}: {err}")
        return opts

    def fla_kwargs(self, d_model: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """Constructor kwargs of ``fla.layers.<fla_class>`` (minus ``hidden_size``/``layer_idx``): the resolved
        options, renamed by ``fla_names``."""
        opts = self.resolve_options(d_model, dict(overrides or {}))
        return {self.fla_names.get(k, k): v for k, v in opts.items() if k not in MODEL_OPTIONS}

    def formula(self, d_model: int, overrides: dict[str, Any] | None = None) -> MixerFormula:
        """Exact parameter and state sizes of this kind's fla layer at ``d_model`` (see `MixerFormula`)."""
        return self.closed_form(d_model, self.resolve_options(d_model, dict(overrides or {})))


def _divides(name: str, n: int, what: str, total: float) -> str | None:
    if n < 1:
        return f"{name}={n} must be >= 1"
    if total != int(total) or int(total) % n:
        return f"{name}={n} does not divide {what} {total:g}"
    return None


def _check_kv(d: int, o: dict[str, Any]) -> str | None:
    return (_divides("num_heads", o["num_heads"], "key dim d_model*expand_k", d * o["expand_k"])
            or _divides("num_heads", o["num_heads"], "value dim d_model*expand_v", d * o["expand_v"]))


def _check_hgrn2(d: int, o: dict[str, Any]) -> str | None:
    return _divides("expand_ratio", o["expand_ratio"], "d_model", d)


def _check_gdn(d: int, o: dict[str, Any]) -> str | None:
    if o["num_heads"] < 1 or o["head_dim"] < 1:
        return "num_heads and head_dim must be >= 1"
    dv = o["head_dim"] * o["expand_v"]
    if dv != int(dv):
        return f"head_dim*expand_v = {dv:g} must be an integer"
    return None


def _check_retnet(d: int, o: dict[str, Any]) -> str | None:
    err = _check_kv(d, o)
    # fla's MultiScaleRetention asserts this (its fused rotary kernel): refuse it here with a readable message.
    if err is None and d * o["expand_k"] / o["num_heads"] > 256:
        err = f"head_k_dim = d_model*expand_k/num_heads = {d * o['expand_k'] / o['num_heads']:g} must be <= 256"
    return err


def _check_mamba2(d: int, o: dict[str, Any]) -> str | None:
    inner = o["expand"] * d
    if o["num_heads"] * o["head_dim"] != inner:
        return f"num_heads*head_dim = {o['num_heads'] * o['head_dim']} must equal expand*d_model = {inner}"
    return _divides("n_groups", o["n_groups"], "num_heads", o["num_heads"])


@dataclass(frozen=True, slots=True)
class MixerFormula:
    """Sizes of one linear mixer layer (the fla layer built with the resolved options), from closed forms.

    Attributes:
        params: ``sum(p.numel())`` of the fla layer.
        dense_params: weights used once per token in a multiply-accumulate (linear and short-conv weights); the
            rest (norm weights, biases, per-head scalars) is elementwise. Drives the FLOP estimate.
        recurrent_elems: elements of the recurrent state of one sequence.
        recurrent_fp32: True when fla keeps the recurrent state in fp32 (all but HGRN, which uses the model dtype).
        conv_channels: total channels of the short convolutions (0 without short conv).
        conv_size: kernel width W; the conv cache keeps W columns per channel.
        state_heads, head_k, head_v: the recurrence as ``state_heads`` matrices of ``head_k x head_v`` (HGRN: one
            1x1 "head" per channel), used for the linear-mixer FLOP term.
    """

    params: int
    dense_params: int
    recurrent_elems: int
    recurrent_fp32: bool
    conv_channels: int
    conv_size: int
    state_heads: int
    head_k: int
    head_v: int

    def recurrent_bytes(self, dtype_bytes: int) -> int:
        """Recurrent state bytes of one sequence with the model dtype of ``dtype_bytes`` bytes."""
        return self.recurrent_elems * (4 if self.recurrent_fp32 else dtype_bytes)

    def conv_bytes(self, dtype_bytes: int) -> int:
        """Short-convolution cache bytes of one sequence (model dtype, W columns per channel)."""
        return self.conv_channels * self.conv_size * dtype_bytes


def _conv(o: dict[str, Any], channels: int) -> tuple[int, int]:
    """(conv channels, kernel width) when the short conv is on, else (0, width)."""
    return (channels if o.get("use_short_conv", False) else 0), o["conv_size"]


def _hgrn_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    D = int(d * o["expand_ratio"])
    ch, w = _conv(o, 2 * D)  # f_conv1d and i_conv1d
    dense = 4 * d * D + ch * w  # i, f, g projections d->D and o_proj D->d
    return MixerFormula(dense + D, dense, D, False, ch, w, D, 1, 1)  # + g_norm weight D


def _kv_dims(d: int, o: dict[str, Any]) -> tuple[int, int, int]:
    return round(d * o["expand_k"]), round(d * o["expand_v"]), o["num_heads"]


def _retnet_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    K, V, H = _kv_dims(d, o)
    dense = d * (2 * K + 3 * V)  # q, k: d->K; v, g: d->V; o: V->d.  No short conv in fla's RetNet.
    return MixerFormula(dense + V // H, dense, K * V // H, True, 0, 4, H, K // H, V // H)


def _gla_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    K, V, H = _kv_dims(d, o)
    r = o["gate_low_rank_dim"]
    ch, w = _conv(o, 2 * K + V)
    dense = d * (2 * K + 3 * V) + d * r + r * K + ch * w  # + low-rank gate d->r->K
    return MixerFormula(dense + K + V // H, dense, K * V // H, True, ch, w, H, K // H, V // H)  # gate bias, norm


def _hgrn2_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    er = o["expand_ratio"]
    H = d // er
    F = H * er  # forget dim (== d when er divides d)
    ch, w = _conv(o, 2 * F + d)
    dense = 2 * d * F + 2 * d * d + ch * w  # q, f: d->F; i: d->d; o: d->d
    return MixerFormula(dense + d, dense, F * (d // H), True, ch, w, H, er, d // H)  # + g_norm d


def _deltanet_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    K, V, H = _kv_dims(d, o)
    ch, w = _conv(o, 2 * K + V)
    dense = d * (2 * K + 2 * V) + (d * H if o["use_beta"] else 0) + ch * w
    return MixerFormula(dense + V // H, dense, K * V // H, True, ch, w, H, K // H, V // H)  # + o_norm


def _gdn_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    H, dk = o["num_heads"], o["head_dim"]
    dv = int(dk * o["expand_v"])
    K, V = H * dk, H * dv
    ch, w = _conv(o, 2 * K + V)
    dense = d * (2 * K + 3 * V) + 2 * d * H + ch * w  # q, k; v, g, o; a, b projections d->H
    return MixerFormula(dense + 2 * H + dv, dense, H * dk * dv, True, ch, w, H, dk, dv)  # A_log, dt_bias, o_norm


def _mamba2_formula(d: int, o: dict[str, Any]) -> MixerFormula:
    I, N, G, H, w = o["expand"] * d, o["state_size"], o["n_groups"], o["num_heads"], o["conv_size"]
    conv_dim = I + 2 * G * N
    dense = d * (I + conv_dim + H) + conv_dim * w + I * d  # in_proj, depthwise conv1d, out_proj
    return MixerFormula(dense + conv_dim + 3 * H + I, dense, I * N, True, conv_dim, w, H, N, o["head_dim"])


_CONV = {"use_short_conv": bool, "conv_size": int}
_CONV_FIELDS = {"use_short_conv": "use_short_conv", "conv_size": "conv_size"}
_KV_FIELDS = {"num_heads": "num_heads", "expand_k": "expand_k", "expand_v": "expand_v"}
#: HGRN/HGRN-2: fla's models (``use_lower_bound``, default on) add a learned forget-gate lower bound per layer.
_LOWER_BOUND = {"lower_bound": bool}

#: Width-derived defaults give GLA, GatedDeltaNet, HGRN-2 and DeltaNet the same recurrent state per layer at every
#: width: 128 x d_model from d_model 256 up (fla's head sizes: GLA/GDN 4 heads at 1024, HGRN-2 expand_ratio 128,
#: DeltaNet 128-wide heads), d_model^2 / 2 below, where the heads cannot shrink further (one GLA/GDN head; HGRN-2
#: expand_ratio d/2, two DeltaNet heads). Narrow models (the `tiny`/`mini` scales, the recall probe's width 64)
#: thus keep the paper scales' state ratios; RetNet keeps its 4x and HGRN its 1/128x (tests/space/test_formulas.py).
MIXER_KINDS: dict[str, MixerKind] = {k.name: k for k in [
    MixerKind(name="hgrn", letter="R", color="#9467bd", fla_class="HGRNAttention",
              defaults=lambda d: {"expand_ratio": 1, "use_short_conv": False, "conv_size": 4, "lower_bound": True},
              option_types={"expand_ratio": int, **_CONV, **_LOWER_BOUND}, closed_form=_hgrn_formula,
              check=lambda d, o: None if o["expand_ratio"] >= 1 else "expand_ratio must be >= 1",
              lower_bound_width=lambda d, o: int(d * o["expand_ratio"]),  # the forget gate's D channels
              fla_model=FlaModel("hgrn", {"expand_ratio": "expand_ratio", "lower_bound": "use_lower_bound",
                                          **_CONV_FIELDS})),
    MixerKind(name="retnet", letter="T", color="#7f7f7f", fla_class="MultiScaleRetention",
              defaults=lambda d: {"num_heads": _heads(d, 256), "expand_k": 1.0, "expand_v": 2.0},
              option_types={"num_heads": int, "expand_k": float, "expand_v": float}, closed_form=_retnet_formula,
              check=_check_retnet, width_options=("num_heads",), fla_model=FlaModel("retnet", _KV_FIELDS)),
    MixerKind(name="gla", letter="G", color="#1f77b4", fla_class="GatedLinearAttention",
              defaults=lambda d: {"num_heads": _heads(d, 256), "expand_k": 0.5, "expand_v": 1.0,
                                  "use_short_conv": False, "conv_size": 4, "gate_low_rank_dim": 16},
              option_types={"num_heads": int, "expand_k": float, "expand_v": float, "gate_low_rank_dim": int,
                            **_CONV},
              closed_form=_gla_formula, check=_check_kv, width_options=("num_heads",),
              fla_model=FlaModel("gla", {**_KV_FIELDS, **_CONV_FIELDS}, fixed={"gate_low_rank_dim": 16})),
    MixerKind(name="hgrn2", letter="2", color="#8c564b", fla_class="HGRN2Attention",
              defaults=lambda d: {"expand_ratio": min(128, max(1, d // 2)), "use_short_conv": False, "conv_size": 4,
                                  "lower_bound": True},
              option_types={"expand_ratio": int, **_CONV, **_LOWER_BOUND}, closed_form=_hgrn2_formula,
              check=_check_hgrn2, width_options=("expand_ratio",), headwise_letter="h",  # "2" has no lower case
              lower_bound_width=lambda d, o: (d // o["expand_ratio"]) * o["expand_ratio"],  # the forget dim
              fla_model=FlaModel("hgrn2", {"expand_ratio": "expand_ratio", "lower_bound": "use_lower_bound",
                                           **_CONV_FIELDS})),
    MixerKind(name="deltanet", letter="D", color="#2ca02c", fla_class="DeltaNet",
              defaults=lambda d: {"num_heads": max(2, _heads(d, 128)), "expand_k": 1.0, "expand_v": 1.0,
                                  "use_short_conv": True, "conv_size": 4, "use_beta": True},
              option_types={"num_heads": int, "expand_k": float, "expand_v": float, "use_beta": bool, **_CONV},
              closed_form=_deltanet_formula, check=_check_kv, width_options=("num_heads",),
              fla_model=FlaModel("delta_net", {**_KV_FIELDS, "use_beta": "use_beta", **_CONV_FIELDS})),
    MixerKind(name="gdn", letter="N", color="#17becf", fla_class="GatedDeltaNet",
              defaults=lambda d: {"num_heads": _heads(d, 256), "head_dim": d // (2 * _heads(d, 256)),
                                  "expand_v": 2.0, "use_short_conv": True, "conv_size": 4},
              option_types={"num_heads": int, "head_dim": int, "expand_v": float, **_CONV},
              closed_form=_gdn_formula, check=_check_gdn, width_options=("num_heads", "head_dim"),
              fla_model=FlaModel("gated_deltanet", {"num_heads": "num_heads", "head_dim": "head_dim",
                                                    "expand_v": "expand_v", **_CONV_FIELDS})),
    MixerKind(name="mamba2", letter="M", color="#bcbd22", fla_class="Mamba2",
              defaults=lambda d: {"expand": 2, "head_dim": min(64, d), "num_heads": 2 * d // min(64, d),
                                  "state_size": min(128, d), "n_groups": 1, "conv_size": 4},
              option_types={"expand": int, "head_dim": int, "num_heads": int, "state_size": int, "n_groups": int,
                            "conv_size": int},
              closed_form=_mamba2_formula, check=_check_mamba2, width_options=("head_dim", "num_heads", "state_size"),
              fla_names={"conv_size": "conv_kernel"},
              fla_model=FlaModel(missing="fla's mamba2 model has no MLP in its blocks and no attention layers, so a "
                                         "hyla block (mixer + SwiGLU) cannot be expressed in it")),
]}

#: Linear mixer kinds, in the order the study lists them.
LINEAR_MIXERS: tuple[str, ...] = tuple(MIXER_KINDS)
MIXER_LETTERS: dict[str, str] = {k.name: k.letter for k in MIXER_KINDS.values()}
#: Letters of head-wise layers (a linear kind with softmax heads beside it): the kind's letter in lower case.
HEADWISE_LETTERS: dict[str, str] = {k.name: k.hw_letter for k in MIXER_KINDS.values()}
#: The six mixers of the paper's grid (mamba2 is an extra).
PAPER_MIXERS: tuple[str, ...] = ("hgrn", "retnet", "gla", "hgrn2", "deltanet", "gdn")


def get_mixer_kind(name: str) -> MixerKind:
    """Look up a linear mixer kind; an unknown name raises a ConfigError listing the known ones."""
    try:
        return MIXER_KINDS[name]
    except KeyError:
        raise ConfigError(f"mixer: unknown mixer {name!r}; expected one of {', '.join(LINEAR_MIXERS)}, attn") from None
