"""Gated Linear Attention (Yang et al. 2023) on fla's ``GatedLinearAttention`` parameters.

CPU math (fla 0.6.0 ``GatedLinearAttention.forward``): q/k/v projections (optionally through silu short convs),
low-rank gate ``gk = logsigmoid(W2 W1 x + b) / gate_logit_normalizer`` (optionally clamped), heads of size
``head_k_dim``/``head_v_dim`` with key/gate/value heads repeated over ``num_kv_groups`` (MQA), the gated recurrence
``S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(head_k_dim)``, then per-head
``RMSNorm(o) * swish(g_proj x)`` (``FusedRMSNormGated``) and ``o_proj``. The recurrent state is kept in fla's
``state_v_first`` layout ``[B, H, V, K]``, fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from fla.layers import GatedLinearAttention
from fla.modules.activations import ACT2FN

from hyla.proxy_train.model.mixers.common import FlaMixer, State, rms_norm, rms_norm_gated
from hyla.proxy_train.model.mixers.scans import gla_scan
from hyla.proxy_train.model.mixers.registry import register_mixer

_GATES = {"swish": F.silu, "silu": F.silu, "sigmoid": torch.sigmoid}


def split_heads(x: torch.Tensor, head_dim: int, groups: int = 1) -> torch.Tensor:
    """``(B, T, h*d) -> (B, T, h*groups, d)``, each head repeated ``groups`` times in place (fla's MQA repeat)."""
    B, T, _ = x.shape
    x = x.reshape(B, T, -1, head_dim)
    return x.repeat_interleave(groups, dim=2) if groups > 1 else x


def output_gate_norm(module: torch.nn.Module, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The output norm/gate shared by fla's GLA and RetNet layers; ``o`` is (B, T, H, V) -> (B, T, H*V)."""
    B, T, H, V = o.shape
    if module.use_output_gate and module.fuse_norm_and_gate:
        g = module.g_proj(x).reshape(B, T, H, V)
        norm = module.g_norm_swish_gate
        return rms_norm_gated(o, g, norm.weight, norm.eps, norm.activation).reshape(B, T, H * V)
    o = rms_norm(o, module.g_norm.weight, module.g_norm.eps).reshape(B, T, H * V)
    if module.use_output_gate:
        return o * _torch_gate(module)(module.g_proj(x))
    return o


def _torch_gate(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    # fla's ACT2FN entries are Triton autograd functions: find the name and use the torch op on the CPU path
    for name, fn in _GATES.items():
        if module.gate_fn == ACT2FN[name]:
            return fn
    raise NotImplementedError(f"{type(module).__name__}: the CPU path supports output gates {list(_GATES)}")


@register_mixer("gla")
class GLAMixer(FlaMixer, GatedLinearAttention):
    """fla's GatedLinearAttention with hyla's ``forward(x, state, use_cache)`` and a pure-PyTorch CPU path.

    State: ``{"recurrent": fp32 [B, H, V, K], "conv_q", "conv_k", "conv_v" (short conv only)}``.
    """

    CONV_ORDER = ("q", "k", "v")

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        (q, k, v), new = self._convs([
            ("q", getattr(self, "q_conv1d", None), self.q_proj(x)),
            ("k", getattr(self, "k_conv1d", None), self.k_proj(x)),
            ("v", getattr(self, "v_conv1d", None), self.v_proj(x)),
        ], state, use_cache)
        gk = self.gk_proj(x)
        g = self.num_kv_groups
        q = split_heads(q, self.head_k_dim)
        k, gk = split_heads(k, self.head_k_dim, g), split_heads(gk, self.head_k_dim, g)
        v = split_heads(v, self.head_v_dim, g)
        gk = F.logsigmoid(gk.float()) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = torch.clamp_min(gk, self.clamp_min)
        if self.feature_map_fn is not None:
            q, k = self.feature_map_fn(q), self.feature_map_fn(k)
        h0 = state["recurrent"].transpose(-1, -2) if state else None  # fla keeps [B, H, V, K]
        o, S = gla_scan(q, k, v, gk, self.head_k_dim ** -0.5, h0, want_state=use_cache)
        y = self.o_proj(output_gate_norm(self, o.to(x.dtype), x))
        if not use_cache:
            return y, None
        new["recurrent"] = S.transpose(-1, -2).contiguous()
        return y, new
