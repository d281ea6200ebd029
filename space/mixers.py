"""Linear mixer kinds: names, default options by width, option validation.

This module is pure Python (no torch) so that the search space and cost accounting are cheap to import.
The torch modules live in ``hyla.proxy_train.mixers``, keyed by the same names; every kind here wraps the
flash-linear-attention (fla) layer named in ``fla_class`` and its options are that layer's constructor
arguments (``hidden_size``/``layer_idx``/``mode`` are filled in by hyla).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyla.config import ConfigError


def _heads(d_model: int, per: int) -> int:
    return max(1, d_model // per)


@dataclass(frozen=True, slots=True)
class MixerKind:
    """One linear mixer kind.

    Attributes:
        name: registry key (``gla``, ``gdn`` ...).
        letter: one letter for layer diagrams.
        fla_class: the fla layer class (in ``fla.layers``) whose parameters hyla's module owns.
        defaults: options at a given d_model (scaled like the paper's 340M configs).
        option_types: every option that may be overridden, with its type.
        check: extra validation of resolved options; returns an error text or None.
    """

    name: str
    letter: str
    fla_class: str
    defaults: Callable[[int], dict[str, Any]]
    option_types: dict[str, type]
    check: Callable[[int, dict[str, Any]], str | None] = lambda d, o: None

    def check_option_names(self, options: dict[str, Any]) -> None:
        for key in options:
            if key not in self.option_types:
                close = difflib.get_close_matches(key, list(self.option_types), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{self.name} options: unknown option {key!r}{hint}; "
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


def _check_mamba2(d: int, o: dict[str, Any]) -> str | None:
    inner = o["expand"] * d
    if o["num_heads"] * o["head_dim"] != inner:
        return f"num_heads*head_dim = {o['num_heads'] * o['head_dim']} must equal expand*d_model = {inner}"
    return _divides("n_groups", o["n_groups"], "num_heads", o["num_heads"])


_CONV = {"use_short_conv": bool, "conv_size": int}

MIXER_KINDS: dict[str, MixerKind] = {k.name: k for k in [
    MixerKind("hgrn", "R", "HGRNAttention",
              lambda d: {"expand_ratio": 1, "use_short_conv": False, "conv_size": 4},
              {"expand_ratio": int, **_CONV},
              lambda d, o: None if o["expand_ratio"] >= 1 else "expand_ratio must be >= 1"),
    MixerKind("retnet", "T", "MultiScaleRetention",
              lambda d: {"num_heads": _heads(d, 256), "expand_k": 1.0, "expand_v": 2.0},
              {"num_heads": int, "expand_k": float, "expand_v": float},
              _check_kv),
    MixerKind("gla", "G", "GatedLinearAttention",
              lambda d: {"num_heads": _heads(d, 256), "expand_k": 0.5, "expand_v": 1.0, "use_short_conv": False,
                         "conv_size": 4, "gate_low_rank_dim": 16},
              {"num_heads": int, "expand_k": float, "expand_v": float, "gate_low_rank_dim": int, **_CONV},
              _check_kv),
    MixerKind("hgrn2", "2", "HGRN2Attention",
              lambda d: {"expand_ratio": min(128, d), "use_short_conv": False, "conv_size": 4},
              {"expand_ratio": int, **_CONV},
              _check_hgrn2),
    MixerKind("deltanet", "D", "DeltaNet",
              lambda d: {"num_heads": _heads(d, 128), "expand_k": 1.0, "expand_v": 1.0, "use_short_conv": True,
                         "conv_size": 4, "use_beta": True},
              {"num_heads": int, "expand_k": float, "expand_v": float, "use_beta": bool, **_CONV},
              _check_kv),
    MixerKind("gdn", "N", "GatedDeltaNet",
              lambda d: {"num_heads": _heads(d, 256), "head_dim": d // (2 * _heads(d, 256)), "expand_v": 2.0,
                         "use_short_conv": True, "conv_size": 4},
              {"num_heads": int, "head_dim": int, "expand_v": float, **_CONV},
              _check_gdn),
    MixerKind("mamba2", "M", "Mamba2",
              lambda d: {"expand": 2, "head_dim": min(64, d), "num_heads": 2 * d // min(64, d),
                         "state_size": min(128, d), "n_groups": 1, "conv_size": 4},
              {"expand": int, "head_dim": int, "num_heads": int, "state_size": int, "n_groups": int,
               "conv_size": int},
              _check_mamba2),
]}

#: Linear mixer kinds, in the order the study lists them.
LINEAR_MIXERS: tuple[str, ...] = tuple(MIXER_KINDS)
MIXER_LETTERS: dict[str, str] = {k.name: k.letter for k in MIXER_KINDS.values()}
#: The six mixers of the paper's grid (mamba2 is an extra).
PAPER_MIXERS: tuple[str, ...] = ("hgrn", "retnet", "gla", "hgrn2", "deltanet", "gdn")


def get_mixer_kind(name: str) -> MixerKind:
    """Look up a linear mixer kind; an unknown name raises a ConfigError listing the known ones."""
    try:
        return MIXER_KINDS[name]
    except KeyError:
        raise ConfigError(f"mixer: unknown mixer {name!r}; expected one of {', '.join(LINEAR_MIXERS)}, attn") from None
