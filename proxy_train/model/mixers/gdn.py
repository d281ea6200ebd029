"""Gated DeltaNet (Yang et al., 2025) as a hyla mixer: fla's ``GatedDeltaNet`` with a pure-PyTorch CPU path.

CPU path = fla's forward with ``use_gate=True`` (fla's default; hyla does not expose it) and
``allow_neg_eigval=False``: q/k/v projections -> short convs (SiLU) -> heads -> L2-normalised q, k ->
``beta = sigmoid(b_proj(x))``, log decay ``g = -exp(A_log) * softplus(a_proj(x) + dt_bias)`` (fp32) -> gated
delta rule (``S = exp(g_t) S; v'_t = beta_t (v_t - S^T k_t); S += k_t v'_t^T; o_t = S^T q_t / sqrt(dk)``,
chunked WY form from :mod:`hyla.proxy_train.model.mixers.deltanet`) -> ``FusedRMSNormGated(o, g_proj(x))`` per head ->
``o_proj``. With grouped value heads (fla's ``num_v_heads > num_heads``) value head ``j`` reads q/k head
``j // (HV / H)``, as fla's kernels do.

State: ``{"recurrent": fp32 (B, HV, dv, dk), "conv_q", "conv_k", "conv_v": (B, C, W)}``. The recurrent state is
kept transposed (V before K) because fla's GatedDeltaNet layer calls its kernels with ``state_v_first=True``; the
CUDA bridge then hands it to fla unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import GatedDeltaNet

from hyla.proxy_train.model.mixers.common import FlaMixer, State, rms_norm, rms_norm_gated
from hyla.proxy_train.model.mixers.deltanet import l2norm
from hyla.proxy_train.model.mixers.scans import delta_scan
from hyla.proxy_train.model.mixers.registry import register_mixer


def gdn_log_decay(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor | None) -> torch.Tensor:
    """fla's ``naive_gdn_gate``: ``-exp(A_log) * softplus(a + dt_bias)`` in fp32 (log of the forget gate)."""
    a = a.float()
    if dt_bias is not None:
        a = a + dt_bias.float()
    return -A_log.float().exp() * F.softplus(a)


@register_mixer("gdn")
class GatedDeltaNetMixer(FlaMixer, GatedDeltaNet):
    """fla ``GatedDeltaNet`` (same parameters / state_dict) with hyla's forward contract and a CPU path."""

    CONV_ORDER = ("q", "k", "v")

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        B, T, _ = x.shape
        (q, k, v), new_state = self._qkv_convs(x, state, use_cache)
        if not self.use_short_conv:  # fla applies SiLU by hand when the convs are off
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        H, HV = self.num_heads, self.num_v_heads
        q = l2norm(q.view(B, T, H, self.head_k_dim))
        k = l2norm(k.view(B, T, H, self.head_k_dim))
        v = v.view(B, T, HV, self.head_v_dim)
        if HV != H:  # grouped value heads: each q/k head serves HV/H consecutive value heads
            q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
        beta = self.b_proj(x).float().sigmoid()
        if self.allow_neg_eigval:
            beta = beta * 2.0
        log_g = gdn_log_decay(self.a_proj(x), self.A_log, self.dt_bias)
        prev = state["recurrent"].transpose(-1, -2) if state else None  # fla keeps (V, K); the scan uses (K, V)
        o, S = delta_scan(q, k, v, beta, log_g, self.head_k_dim ** -0.5, prev, want_state=use_cache)
        o = o.to(v.dtype)
        if self.use_gate:
            g = self.g_proj(x).view(B, T, HV, self.head_v_dim)
            o = rms_norm_gated(o, g, self.o_norm.weight, self.o_norm.eps, self.o_norm.activation)
        else:
            o = rms_norm(o, self.o_norm.weight, self.o_norm.eps)
        y = self.o_proj(o.reshape(B, T, self.value_dim))
        if not use_cache:
            return y, None
        return y, {"recurrent": S.transpose(-1, -2).contiguous(), **new_state}


__all__ = ["GatedDeltaNetMixer", "gdn_log_decay"]
