"""Initialise a linear mixer from a trained softmax-attention layer (the retrofit's weight mapping).

As in the linearisation literature (Mamba-in-the-Llama, hybrid-distillation, RADLADS, LoLCATs;
``../shared/REFERENCE.md``), the attention projections go where a mixer has their counterpart, and every other
parameter (gates, decays, beta, dt, A, D) keeps the kind's own initialisation:

=========  ======================  ======================  ======================  ===========  ======================
kind       query ->                key ->                  value ->                out ->       kept at the default
=========  ======================  ======================  ======================  ===========  ======================
gla        ``q_proj``              ``k_proj``              ``v_proj``              ``o_proj``   ``gk_proj``, ``g_proj``
retnet     ``q_proj``              ``k_proj``              ``v_proj``              ``o_proj``   ``g_proj`` (decays fixed)
deltanet   ``q_proj``              ``k_proj``              ``v_proj``              ``o_proj``   ``b_proj`` (beta)
gdn        ``q_proj``              ``k_proj``              ``v_proj``              ``o_proj``   ``a_proj``, ``b_proj``,
                                                                                                ``A_log``, ``dt_bias``,
                                                                                                ``g_proj``
hgrn2      ``q_proj``              ``f_proj`` (its key is  ``i_proj``              ``o_proj``   --
                                   ``1 - forget gate``)
hgrn       --                      --                      ``i_proj``              ``o_proj``   ``f_proj``, ``g_proj``
mamba2     C rows of ``in_proj``   B rows of ``in_proj``   x rows of ``in_proj``   ``out_proj`` z and dt rows,
                                                                                                ``A_log``, ``D``,
                                                                                                ``dt_bias``
=========  ======================  ======================  ======================  ===========  ======================

**Heads where shapes differ** (`head_rows`). A mixer with ``n`` key (or value) heads of size ``e`` takes, for its
head ``j``, the rows of a group of the teacher's ``H`` query heads of size ``hd``: heads ``[j H/n, (j+1) H/n)``
when ``n`` divides ``H`` (a wider head covers several attention heads: GLA's one head at ``tiny``, Mamba2's one
B/C group), head ``j H / n`` when ``H`` divides ``n`` (more heads repeat attention heads), else head ``j mod H``.
The group's rows are concatenated, then cut to ``e`` (GLA's ``expand_k 0.5`` keeps the first half) or tiled to
``e`` (RetNet's ``expand_v 2`` repeats the values). A key head takes its rows from the key/value head of the
attention (GQA). The output projection takes, for each mixer value row, the column of the attention value row it
copies, divided by how often that row was copied, so that equal value rows sum back to the teacher's output.

Short convolutions (GDN, DeltaNet, and GLA/HGRN/HGRN-2 when on) start as the identity (the current token only),
so the mapped projections reach the recurrence unmixed; Mamba2's conv likewise, its bias zero.

**Neutral start** (``start="neutral"``, the default). A fresh gate or norm makes the mapped layer's output
arbitrary, and in a trained network an arbitrary residual branch breaks every layer after it (the prototype of
issue 31 scored chance after the copy, even at 3:1). Every kind ends in a normalisation with a weight
(``g_norm``/``o_norm``/``norm``, fused with the output gate in GLA, RetNet, GDN, HGRN and Mamba2): it starts at
zero, so the layer adds exactly nothing (the network is the teacher with this layer's attention taken out) and
its first gradient reaches that weight, then everything behind it. ``start="default"`` keeps the kind's norm
weight (the naive copy), for comparison.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers.attention import SoftmaxAttention

#: How a mapped layer starts: ``neutral`` (output-norm weight 0: the layer adds nothing) or ``default``.
STARTS = ("neutral", "default")


def head_rows(n_heads: int, size: int, attn_heads: int, head_dim: int) -> list[int]:
    """Rows of the attention's query-head space (``attn_heads * head_dim``) that ``n_heads`` mixer heads of
    ``size`` rows take, in the mixer's row order (see the module docstring)."""
    if n_heads < 1 or size < 1:
        raise ValueError(f"head_rows: n_heads {n_heads} and size {size} must be >= 1")
    rows: list[int] = []
    for j in range(n_heads):
        if attn_heads % n_heads == 0:
            per = attn_heads // n_heads
            group = range(j * per, (j + 1) * per)
        elif n_heads % attn_heads == 0:
            group = range(j * attn_heads // n_heads, j * attn_heads // n_heads + 1)
        else:
            group = range(j % attn_heads, j % attn_heads + 1)
        src = [h * head_dim + o for h in group for o in range(head_dim)]
        rows += (src * math.ceil(size / len(src)))[:size]
    return rows


class _Source:
    """The teacher attention's weights in query-head space, and the copies it hands out."""

    def __init__(self, attn: SoftmaxAttention) -> None:
        self.attn = attn
        self.H, self.hd, self.Hkv = attn.n_heads, attn.head_dim, attn.n_kv_heads

    def _kv(self, rows: list[int]) -> list[int]:
        """Query-head rows -> rows of the key/value projections (GQA: query head h reads kv head h // group)."""
        group = self.H // self.Hkv
        return [(r // self.hd) // group * self.hd + r % self.hd for r in rows]

    def q(self, n: int, e: int) -> torch.Tensor:
        return self.attn.q_proj.weight[head_rows(n, e, self.H, self.hd)]

    def k(self, n: int, e: int) -> torch.Tensor:
        return self.attn.k_proj.weight[self._kv(head_rows(n, e, self.H, self.hd))]

    def v_and_o(self, n: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Value rows for ``n`` heads of ``e`` and the matching output columns (each divided by its copies)."""
        rows = head_rows(n, e, self.H, self.hd)
        copies = torch.bincount(torch.tensor(rows), minlength=self.H * self.hd).to(self.attn.o_proj.weight)
        cols = self.attn.o_proj.weight[:, rows] / copies[rows]
        return self.attn.v_proj.weight[self._kv(rows)], cols


def _set(param: torch.Tensor, value: torch.Tensor, what: str) -> None:
    if param.shape != value.shape:
        raise ConfigError(f"retrofit mapping: {what} has shape {tuple(param.shape)}, the attention gives "
                          f"{tuple(value.shape)}")
    param.copy_(value)


def identity_conv(conv: nn.Module | None) -> None:
    """A depthwise causal conv ``(C, 1, W)`` that passes the current token through (last tap 1, others 0)."""
    if conv is None:
        return
    conv.weight.zero_()
    conv.weight[:, 0, -1] = 1.0
    if getattr(conv, "bias", None) is not None:
        conv.bias.zero_()


def _qkvo(m: nn.Module, src: _Source, n_k: int, e_k: int, n_v: int, e_v: int, q: str = "q_proj",
          k: str = "k_proj", v: str = "v_proj", o: str = "o_proj") -> None:
    _set(getattr(m, q).weight, src.q(n_k, e_k), f"{m.KIND}.{q}")
    _set(getattr(m, k).weight, src.k(n_k, e_k), f"{m.KIND}.{k}")
    vw, ow = src.v_and_o(n_v, e_v)
    _set(getattr(m, v).weight, vw, f"{m.KIND}.{v}")
    _set(getattr(m, o).weight, ow, f"{m.KIND}.{o}")
    for name in ("q_conv1d", "k_conv1d", "v_conv1d", "f_conv1d", "i_conv1d"):
        identity_conv(getattr(m, name, None))


def _gla(m: nn.Module, src: _Source) -> nn.Parameter:
    if m.num_kv_groups != 1:
        raise ConfigError("retrofit mapping: gla with num_kv_heads < num_heads is not mapped")
    _qkvo(m, src, m.num_heads, m.head_k_dim, m.num_heads, m.head_v_dim)
    return m.g_norm_swish_gate.weight if m.use_output_gate and m.fuse_norm_and_gate else m.g_norm.weight


def _retnet(m: nn.Module, src: _Source) -> nn.Parameter:
    if m.num_kv_groups != 1:
        raise ConfigError("retrofit mapping: retnet with num_kv_heads < num_heads is not mapped")
    _qkvo(m, src, m.num_heads, m.head_k_dim, m.num_heads, m.head_v_dim)
    return m.g_norm_swish_gate.weight if m.use_output_gate and m.fuse_norm_and_gate else m.g_norm.weight


def _deltanet(m: nn.Module, src: _Source) -> nn.Parameter:
    _qkvo(m, src, m.num_heads, m.head_k_dim, m.num_heads, m.head_v_dim)
    return m.o_norm.weight


def _gdn(m: nn.Module, src: _Source) -> nn.Parameter:
    _qkvo(m, src, m.num_heads, m.head_k_dim, m.num_v_heads, m.head_v_dim)
    return m.o_norm.weight


def _hgrn2(m: nn.Module, src: _Source) -> nn.Parameter:
    _qkvo(m, src, m.num_heads, m.head_f_dim, m.num_heads, m.head_i_dim, k="f_proj", v="i_proj")
    return m.g_norm.weight


def _hgrn(m: nn.Module, src: _Source) -> nn.Parameter:
    vw, ow = src.v_and_o(1, m.i_proj.weight.shape[0])
    _set(m.i_proj.weight, vw, "hgrn.i_proj")
    _set(m.o_proj.weight, ow, "hgrn.o_proj")
    identity_conv(getattr(m, "i_conv1d", None))
    identity_conv(getattr(m, "f_conv1d", None))
    return m.g_norm.weight


def _mamba2(m: nn.Module, src: _Source) -> nn.Parameter:
    I, H, P, N, G = m.intermediate_size, m.num_heads, m.head_dim, m.ssm_state_size, m.n_groups
    w = m.in_proj.weight  # rows: z (I) | x (I) | B (G N) | C (G N) | dt (H)
    vw, ow = src.v_and_o(H, P)
    _set(w[I:2 * I], vw, "mamba2.in_proj[x]")
    _set(w[2 * I:2 * I + G * N], src.k(G, N), "mamba2.in_proj[B]")
    _set(w[2 * I + G * N:2 * I + 2 * G * N], src.q(G, N), "mamba2.in_proj[C]")
    _set(m.out_proj.weight, ow, "mamba2.out_proj")
    identity_conv(m.conv1d)
    return m.norm.weight


#: kind -> mapper: copies the attention's projections into the mixer, returns its output-norm weight.
MAPPERS: dict[str, Callable[[nn.Module, _Source], nn.Parameter]] = {
    "gla": _gla, "retnet": _retnet, "deltanet": _deltanet, "gdn": _gdn, "hgrn2": _hgrn2, "hgrn": _hgrn,
    "mamba2": _mamba2,
}


def output_norm_weight(mixer: nn.Module) -> nn.Parameter:
    """The weight of a mapped kind's last normalisation (its zero makes the layer's output exactly zero)."""
    for name in ("g_norm_swish_gate", "o_norm", "g_norm", "norm"):
        norm = getattr(mixer, name, None)
        if norm is not None and getattr(norm, "weight", None) is not None:
            return norm.weight
    raise ConfigError(f"retrofit mapping: {type(mixer).__name__} has no output norm weight")


@torch.no_grad()
def map_attention(mixer: nn.Module, attn: SoftmaxAttention, start: str = "neutral") -> None:
    """Initialise the linear ``mixer`` (a hyla mixer module of any kind in `MAPPERS`) from the trained ``attn``
    in place (module docstring). ``start="neutral"`` zeroes the output-norm weight: the layer adds nothing."""
    if start not in STARTS:
        raise ConfigError(f"retrofit.start: {start!r} is not allowed; expected one of {', '.join(STARTS)}")
    kind = getattr(mixer, "KIND", "")
    if kind not in MAPPERS:
        raise ConfigError(f"retrofit mapping: no mapping from attention to {kind or type(mixer).__name__!r}; "
                          f"expected one of {', '.join(MAPPERS)}")
    norm_weight = MAPPERS[kind](mixer, _Source(attn))
    if start == "neutral":
        norm_weight.zero_()
