"""DeltaNet (Yang et al., 2024) as a hyla mixer: fla's ``DeltaNet`` layer with a pure-PyTorch CPU path.

The CPU path reproduces fla's forward with the default options hyla uses (``qk_activation="silu"``,
``qk_norm="l2"``, ``use_gate=False``, ``allow_neg_eigval=False``; the other fla variants are handled too):
q/k/v projections -> short convs (SiLU) -> heads -> L2-normalised q, k -> ``beta = sigmoid(b_proj(x))`` ->
delta rule -> per-head RMSNorm (``o_norm``) -> ``o_proj``.

The delta rule (per head, state ``S`` of shape (K, V), fla ``ops/delta_rule/naive.py``)::

    v'_t = beta_t * (v_t - S_{t-1}^T k_t);   S_t = S_{t-1} + k_t v'_t^T;   o_t = S_t^T (q_t / sqrt(K))

is evaluated chunk-wise in the WY form (``mixers.scans.chunk_delta_rule``, shared with Gated DeltaNet): within a chunk the
pseudo-values come from one triangular solve, and chunks are chained through ``S`` (training speed on CPU); a
single decode step is the same function with a chunk of one token.
State: ``{"recurrent": fp32 (B, H, K, V), "conv_q", "conv_k", "conv_v": (B, C, W)}`` (fla's layout and order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import DeltaNet

from hyla.proxy_train.model.mixers.common import FlaMixer, State, rms_norm, rms_norm_gated
from hyla.proxy_train.model.mixers.registry import register_mixer
from hyla.proxy_train.model.mixers.scans import delta_scan

def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """fla's ``l2norm`` (``x / sqrt(sum(x^2) + eps)`` over the last dim), in fp32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)


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
        o, S = delta_scan(q, k, v, beta, None, self.head_k_dim ** -0.5, prev, want_state=use_cache)
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


__all__ = ["DeltaNetMixer", "l2norm"]
