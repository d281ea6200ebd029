"""HGRN-2 (Qin et al. 2024): HGRN with state expansion, on fla's ``HGRN2Attention`` parameters.

CPU math (fla 0.6.0 ``HGRN2Attention.forward``): q/f/i projections (optionally through activation-free short
convs), ``q = swish(q)``, ``g = logsigmoid(f)`` (with the model's ``lower_bound`` lb from layer 1 on,
``g = log(lb + (1 - lb) sigmoid(f))``, computed as fla does with ``logaddexp``), the tied key
``k = 1 - exp(g)``; ``H = d_model / expand_ratio`` heads with key/gate size ``expand_ratio`` and value size
``d_model / H``; GLA's recurrence ``S_t = diag(exp(g_t)) S_{t-1} + k_t i_t^T``, ``o_t = S_t^T q_t / sqrt(expand_ratio)``
(fla's default scale); then RMSNorm over all ``d_model`` channels and ``o_proj``. fla fuses that norm into
``rms_norm_linear`` with its default eps 1e-5 (not ``g_norm.eps``), which the CPU path copies. The recurrent state
is fla's ``state_v_first`` layout ``[B, H, V, K]`` fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import HGRN2Attention

from hyla.proxy_train.model.mixers.common import FlaMixer, State, bounded_log_gate, rms_norm
from hyla.proxy_train.model.mixers.scans import gla_scan
from hyla.proxy_train.model.mixers.gla import split_heads
from hyla.proxy_train.model.mixers.registry import register_mixer

#: eps that fla's ``rms_norm_linear`` uses in HGRN2Attention (the layer does not pass ``g_norm.eps``).
FLA_RMS_NORM_LINEAR_EPS = 1e-5


@register_mixer("hgrn2")
class HGRN2Mixer(FlaMixer, HGRN2Attention):
    """fla's HGRN2Attention with hyla's ``forward(x, state, use_cache)`` and a pure-PyTorch CPU path.

    State: ``{"recurrent": fp32 [B, H, V, K], "conv_q", "conv_f", "conv_i" (short conv only)}``.
    """

    CONV_ORDER = ("q", "f", "i")

    def _cpu_forward(self, x: torch.Tensor, state: State | None, use_cache: bool,
                     lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, State | None]:
        B, T, _ = x.shape
        (q, f, i), new = self._convs([
            ("q", getattr(self, "q_conv1d", None), self.q_proj(x)),
            ("f", getattr(self, "f_conv1d", None), self.f_proj(x)),
            ("i", getattr(self, "i_conv1d", None), self.i_proj(x)),
        ], state, use_cache)
        q = F.silu(q)
        g = bounded_log_gate(F.logsigmoid(f.float()), lower_bound, self.layer_idx)
        k = (1 - g.exp()).to(i.dtype)
        q, k, g = (split_heads(t, self.head_f_dim) for t in (q, k, g))
        v = split_heads(i, self.head_i_dim)
        h0 = state["recurrent"].transpose(-1, -2) if state else None  # fla keeps [B, H, V, K]
        o, S = gla_scan(q, k, v, g, self.head_f_dim ** -0.5, h0, want_state=use_cache)
        o = rms_norm(o.to(x.dtype).reshape(B, T, -1), self.g_norm.weight, FLA_RMS_NORM_LINEAR_EPS)
        y = self.o_proj(o.to(self.o_proj.weight.dtype))
        if not use_cache:
            return y, None
        new["recurrent"] = S.transpose(-1, -2).contiguous()
        return y, new
