"""DeltaNet (Yang et al., 2024) as a hyla mixer: fla's ``DeltaNet`` layer with a pure-PyTorch CPU path.

The CPU path reproduces fla's forward with the default options hyla uses (``qk_activation="silu"``,
``qk_norm="l2"``, ``use_gate=False``, ``allow_neg_eigval=False``; the other fla variants are handled too):
q/k/v projections -> short convs (SiLU) -> heads -> L2-normalised q, k -> ``beta = sigmoid(b_proj(x))`` ->
delta rule -> per-head RMSNorm (``o_norm``) -> ``o_proj``.

The delta rule (per head, state ``S`` of shape (K, V), fla ``ops/delta_rule/naive.py``)::

    v'_t = beta_t * (v_t - S_{t-1}^T k_t);   S_t = S_{t-1} + k_t v'_t^T;   o_t = S_t^T (q_t / sqrt(K))

is evaluated chunk-wise in the WY form (:func:`chunk_delta_rule`, shared with Gated DeltaNet): within a chunk the
pseudo-values come from one triangular solve, and chunks are chained through ``S`` (training speed on CPU); a
single decode step is the same function with a chunk of one token.
State: ``{"recurrent": fp32 (B, H, K, V), "conv_q", "conv_k", "conv_v": (B, C, W)}`` (fla's layout and order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import DeltaNet

from hyla.proxy_train.mixers.common import FlaMixer, State, chunk_length, rms_norm, rms_norm_gated
from hyla.proxy_train.mixers.registry import register_mixer

#: Chunk length of the CPU delta-rule scan; the triangular solve is (C, C) per head and chunk.
DELTA_CHUNK = 32


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's ``l2norm`` (``x / sqrt(sum(x^2) + eps)`` over the last dim), in fp32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)


def chunk_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     log_g: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None = None,
                     chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gated) delta rule, chunked WY form; the math of fla's ``naive_chunk_gated_delta_rule``.

    Recurrence per head: ``S = exp(g_t) S``; ``v'_t = beta_t (v_t - S^T k_t)``; ``S += k_t v'_t^T``;
    ``o_t = S^T (scale q_t)``. ``log_g=None`` is plain DeltaNet (no decay).

    Within a chunk of length C (cumulative log gate ``G``, pairwise decay ``L_ts = exp(G_t - G_s)`` for s <= t,
    all exponents <= 0 so nothing overflows), the pseudo-values solve the unit lower-triangular system
    ``(I + strict_lower(diag(beta) K K^T * L)) U = beta V - diag(beta) (K * exp(G)) S_prev``, split as
    ``U = u - w S_prev`` with ``u = A^{-1} beta V`` and ``w = A^{-1} (beta K exp(G))`` computed once per chunk.

    Args:
        q, k: ``(B, T, H, K)`` (already normalised); v: ``(B, T, H, V)``; beta: ``(B, T, H)``.
        log_g: ``(B, T, H)`` log decays (<= 0) or None.
        scale: query scale.
        initial_state: ``(B, H, K, V)`` or None.

    Returns:
        ``(o, S)``: ``o`` ``(B, T, H, V)`` fp32, final state ``(B, H, K, V)`` fp32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = max(1, min(chunk_length(chunk, DELTA_CHUNK), T))
    n = -(-T // C)
    pad = n * C - T
    q, k, v, beta = (t.float() for t in (q, k, v, beta))
    g = torch.zeros_like(beta) if log_g is None else log_g.float()
    if pad:  # padded steps: k = v = beta = 0 and no decay, so they leave the state untouched
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        beta, g = F.pad(beta, (0, 0, 0, pad)), F.pad(g, (0, 0, 0, pad))
    # (B, H, n, C, *)
    q, k, v = (t.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    beta, g = (t.reshape(B, n, C, H).permute(0, 3, 1, 2) for t in (beta, g))
    q = q * scale
    gc = g.cumsum(-1)  # (B, H, n, C)
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    L = torch.exp((gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill(~tril, float("-inf")))  # (B, H, n, C, C)
    k_beta = k * beta.unsqueeze(-1)
    strict = (k_beta @ k.transpose(-1, -2) * L).tril(-1)
    A = strict + torch.eye(C, device=q.device)
    u = torch.linalg.solve_triangular(A, v * beta.unsqueeze(-1), upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(A, k_beta * gc.exp().unsqueeze(-1), upper=False, unitriangular=True)
    qk = q @ k.transpose(-1, -2) * L  # causal (diagonal included) intra-chunk scores, decayed
    q_decay = q * gc.exp().unsqueeze(-1)
    g_last = gc[..., -1:]  # (B, H, n, 1)
    k_decay = k * torch.exp(g_last - gc).unsqueeze(-1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ S  # (B, H, C, V)
        outs.append(q_decay[:, :, i] @ S + qk[:, :, i] @ v_new)
        S = S * g_last[:, :, i].exp().unsqueeze(-1) + k_decay[:, :, i].transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2), S


@register_mixer("deltanet")
class DeltaNetMixer(FlaMixer, DeltaNet):
    """fla ``DeltaNet`` (same parameters / state_dict) with hyla's forward contract and a CPU path."""

    CONV_ORDER = ("q", "k", "v")

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        B, T, _ = x.shape
        (q, k, v), new_state = self._qkv_convs(x, state, use_cache)
        if not self.use_short_conv:  # fla applies the convs' SiLU by hand when they are off
            if self.qk_activation == "silu":
                q, k = F.silu(q), F.silu(k)
            v = F.silu(v)
        q = q.view(B, T, self.num_heads, self.head_k_dim)
        k = k.view(B, T, self.num_heads, self.head_k_dim)
        v = v.view(B, T, self.num_heads, self.head_v_dim)
        if self.qk_activation == "relu":
            q, k = q.relu(), k.relu()
        elif self.qk_activation == "elu":
            q, k = F.elu(q) + 1, F.elu(k) + 1
        if self.qk_norm == "l2":
            q, k = l2norm(q), l2norm(k)
        else:  # "sum"
            q, k = (F.normalize(t.float(), p=1, dim=-1, eps=1e-6) for t in (q, k))
        beta = self.b_proj(x).sigmoid() if self.use_beta else x.new_ones(B, T, self.num_heads)
        if self.allow_neg_eigval:
            beta = beta * 2.0
        prev = state["recurrent"] if state else None
        o, S = chunk_delta_rule(q, k, v, beta, None, self.head_k_dim ** -0.5, prev)
        o = o.to(v.dtype)
        if self.use_gate:
            g = self.g_proj(x).view(B, T, self.num_heads, self.head_v_dim)
            o = rms_norm_gated(o, g, self.o_norm.weight, self.o_norm.eps, self.o_norm.activation)
        else:
            o = rms_norm(o, self.o_norm.weight, self.o_norm.eps)
        y = self.o_proj(o.reshape(B, T, self.value_dim))
        if not use_cache:
            return y, None
        return y, {"recurrent": S, **new_state}


__all__ = ["DeltaNetMixer", "chunk_delta_rule", "l2norm"]
