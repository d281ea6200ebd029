"""RetNet's multi-scale retention (Sun et al. 2023) on fla's ``MultiScaleRetention`` parameters.

CPU math (fla 0.6.0 ``MultiScaleRetention.forward``): q/k/v projections (short convs only if constructed with
them; hyla's retnet options never turn them on), rotary embedding on q and k (non-interleaved halves, base 10000,
over ``head_k_dim``, offset by the tokens already seen), fixed per-head decays ``gamma_h = 1 - 2^(-5-h)``,
``S_t = gamma_h S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t / sqrt(head_k_dim)``, then per-head
``RMSNorm(o) * swish(g_proj x)`` and ``o_proj``. The state is fla's ``[B, H, K, V]`` fp32 plus ``"pos"``.

On the CPU the whole sequence is handled by the parallel (quadratic) retention form for T <= ``PARALLEL_MAX_T``
(one masked matmul, fastest for proxy lengths) and by the chunked scan beyond or when continuing a state.
"""

from __future__ import annotations

import torch
from fla.layers import MultiScaleRetention

from hyla.proxy_train.model.mixers.common import FlaMixer, State
from hyla.proxy_train.model.mixers.scans import chunk_gated_linear_attn
from hyla.proxy_train.model.mixers.gla import output_gate_norm, split_heads
from hyla.proxy_train.model.mixers.registry import register_mixer

#: Longest sequence run through the parallel form (its (T, T) decay mask per head grows quadratically).
PARALLEL_MAX_T = 512


def retention_log_decay(num_heads: int, device: torch.device | None = None) -> torch.Tensor:
    """``log(gamma_h)`` with ``gamma_h = 1 - 2^(-5-h)`` (fla's ``chunk_retention``), fp32 ``(H,)``."""
    h = torch.arange(num_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h))


def rotary(x: torch.Tensor, offset: int, base: float) -> torch.Tensor:
    """fla's ``RotaryEmbedding`` (non-interleaved) on ``x`` (B, T, H, D) at positions ``offset .. offset+T-1``."""
    T, D = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D))
    t = torch.arange(offset, offset + T, device=x.device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    # fla casts the tables to the input dtype before rotating
    cos = torch.cat([freqs.cos(), freqs.cos()], -1).to(x.dtype)[None, :, None]
    sin = torch.cat([freqs.sin(), freqs.sin()], -1).to(x.dtype)[None, :, None]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def parallel_retention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_decay: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """Retention from a zero state, parallel form: ``o = (Q K^T * D) V``, ``D[t, s] = gamma^(t-s)`` for s <= t.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; log_decay: ``(H,)``.

    Returns:
        ``o`` ``(B, T, H, V)`` fp32.
    """
    T = q.shape[1]
    n = torch.arange(T, device=q.device, dtype=torch.float32)
    dist = n[:, None] - n[None, :]
    mask = torch.exp((dist * log_decay[:, None, None]).masked_fill(dist < 0, float("-inf")))  # (H, T, T)
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, H, T, *)
    scores = (qf * scale) @ kf.transpose(-1, -2) * mask
    return (scores @ vf).transpose(1, 2)


@register_mixer("retnet")
class RetNetMixer(FlaMixer, MultiScaleRetention):
    """fla's MultiScaleRetention with hyla's ``forward(x, state, use_cache)`` and a pure-PyTorch CPU path.

    State: ``{"recurrent": fp32 [B, H, K, V], "pos": int}`` (plus ``conv_q/k/v`` if built with short convs).
    """

    CONV_ORDER = ("q", "k", "v")
    TRACK_POS = True

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        B, T, _ = x.shape
        (q, k, v), new = self._convs([
            ("q", getattr(self, "q_conv1d", None), self.q_proj(x)),
            ("k", getattr(self, "k_conv1d", None), self.k_proj(x)),
            ("v", getattr(self, "v_conv1d", None), self.v_proj(x)),
        ], state, use_cache)
        q, k = split_heads(q, self.head_k_dim), split_heads(k, self.head_k_dim)
        if self.feature_map_fn is not None:
            q, k = self.feature_map_fn(q), self.feature_map_fn(k)
        pos = int(state.get("pos", 0)) if state else 0
        q, k = rotary(q, pos, self.rotary.base), rotary(k, pos, self.rotary.base)
        g = self.num_kv_groups
        if g > 1:
            k = k.repeat_interleave(g, dim=2)
        v = split_heads(v, self.head_v_dim, g)
        log_decay = retention_log_decay(self.num_heads, x.device)
        scale = self.head_k_dim ** -0.5
        if state is None and not use_cache and T <= PARALLEL_MAX_T:
            o = parallel_retention(q, k, v, log_decay, scale)
            S = None
        else:
            h0 = state["recurrent"] if state else None
            o, S = chunk_gated_linear_attn(q, k, v, log_decay[None, None, :, None], scale, h0)
        y = self.o_proj(output_gate_norm(self, o.to(x.dtype), x))
        if not use_cache:
            return y, None
        new.update(recurrent=S.contiguous(), pos=pos + T)
        return y, new

