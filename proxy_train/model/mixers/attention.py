"""Softmax attention on ``torch.nn.functional.scaled_dot_product_attention``: RoPE, GQA, sliding window, KV cache.

One class serves whole attention layers (``mixer="attn"``, all ``Layout.num_heads`` heads) and the softmax branch
of head-wise hybrid layers (k heads, built by ``hyla.proxy_train.model.mixers.headwise``). Parameter names and shapes
are those of fla's ``Attention`` (q_proj/k_proj/v_proj/o_proj, no bias), so weights export 1:1; we do not
subclass it because fla's layer refuses to construct without flash_attn, which the CPU machines lack.

Conventions (identical to fla's ``Attention`` with flash_attn):

- RoPE is the non-interleaved ("rotate half", GPT-NeoX) form over the whole head dim, base ``rope_theta``.
- A sliding window ``w`` lets query ``t`` see keys ``t-w+1 .. t`` (w tokens, itself included), i.e. flash_attn's
  ``window_size=(w-1, 0)``.
- State (one entry per layer): ``{"k": (B, Hkv, Tc, hd), "v": (B, Hkv, Tc, hd), "pos": int}`` where
  ``Tc = min(tokens seen, window)``: keys/values beyond the window can never be attended to again, so they are
  dropped, and the state's tensor bytes equal the KV term of ``hyla.space.cost`` exactly. ``pos`` (tokens seen,
  for RoPE) is a python int and does not count as memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hyla.config import ConfigError
from hyla.space.layout import Layout
from hyla.proxy_train.model.mixers.registry import register_mixer

State = dict[str, Any]


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables (T, head_dim) in fp32 for absolute ``positions`` (T,), fla's RotaryEmbedding layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32)
                                / head_dim))
    freqs = torch.outer(positions.to(torch.float32), inv_freq)  # (T, hd/2)
    freqs = torch.cat([freqs, freqs], dim=-1)  # (T, hd): non-interleaved, both halves share a frequency
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) by the tables (T, hd); computed in fp32 (bf16 angles lose positions)."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


@register_mixer("attn")
class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with RoPE, grouped KV heads and an optional sliding window.

    Args:
        d_model: input/output width.
        n_heads: query heads.
        n_kv_heads: key/value heads (GQA); must divide ``n_heads``. None = ``n_heads``.
        head_dim: per-head width; None = ``d_model // n_heads``. The head-wise hybrid passes the layout's head
            dim so that its k heads have the same size as a whole attention layer's heads.
        window: sliding window in tokens (None = full causal attention).
        rope_theta: RoPE base.
        layer_idx: layer index (kept for the CUDA cache bridge and for messages).

    Parameters: ``q_proj`` d×(H·hd), ``k_proj``/``v_proj`` d×(Hkv·hd), ``o_proj`` (H·hd)×d, no biases.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None,
                 window: int | None = None, rope_theta: float = 10000.0, layer_idx: int | None = None) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        where = f"layers[{layer_idx}]" if layer_idx is not None else "attention"
        if n_heads < 1 or d_model < 1:
            raise ConfigError(f"{where}: attention needs d_model >= 1 and n_heads >= 1, got {d_model}, {n_heads}")
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ConfigError(f"{where}.num_kv_heads: {n_kv_heads} must divide num_heads {n_heads}")
        head_dim = d_model // n_heads if head_dim is None else head_dim
        if head_dim < 2 or head_dim % 2:
            raise ConfigError(f"{where}: head_dim {head_dim} must be an even integer >= 2 (RoPE rotates pairs)")
        if window is not None and window < 1:
            raise ConfigError(f"{where}.window: {window} must be a positive token count or null")
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.window, self.rope_theta, self.layer_idx = window, float(rope_theta), layer_idx
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    @classmethod
    def from_layout(cls, layout: Layout, index: int) -> SoftmaxAttention:
        """The whole attention layer ``index`` of ``layout`` (num_heads, num_kv_heads, window, rope_theta)."""
        spec = layout.layers[index]
        if not spec.is_attention:
            raise ConfigError(f"layers[{index}].mixer: {spec.mixer!r} is not 'attn'; build it with build_mixer")
        return cls(layout.d_model, layout.num_heads, layout.kv_heads, layout.head_dim, spec.window,
                   layout.rope_theta, layer_idx=index)

    def extra_repr(self) -> str:
        return (f"heads={self.n_heads}, kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, "
                f"window={self.window}, rope_theta={self.rope_theta:g}")

    def state_bytes(self, context: int, dtype: torch.dtype) -> int:
        """KV-cache bytes of one sequence after ``context`` tokens (what ``forward`` keeps)."""
        kept = context if self.window is None else min(context, self.window)
        return 2 * self.n_kv_heads * self.head_dim * kept * torch.empty((), dtype=dtype).element_size()

    def forward(self, x: torch.Tensor, state: State | None = None, use_cache: bool = False
                ) -> tuple[torch.Tensor, State | None]:
        """Attend over ``x`` (B, T, D), continuing from ``state`` if given.

        Returns:
            ``(y, new_state)``: y (B, T, D); new_state is None unless ``use_cache``.
        """
        B, T, _ = x.shape
        pos = int(state["pos"]) if state is not None else 0
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rope_cos_sin(torch.arange(pos, pos + T, device=x.device), self.head_dim, self.rope_theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        past = 0
        if state is not None and state["k"].shape[2] > 0:
            if state["k"].shape[0] != B:
                raise ConfigError(f"attention state: batch {state['k'].shape[0]} does not match input batch {B}")
            past = state["k"].shape[2]
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        o = self._attend(q, k, v, past)
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

        if not use_cache:
            return y, None
        if self.window is not None and k.shape[2] > self.window:
            # Keys older than the window are never visible again: drop them (and their storage, via contiguous()).
            k, v = k[:, :, -self.window:].contiguous(), v[:, :, -self.window:].contiguous()
        return y, {"k": k, "v": v, "pos": pos + T}

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: int) -> torch.Tensor:
        """SDPA of q (B, H, T, hd) over k, v (B, Hkv, past+T, hd); query i sits at key index past+i."""
        T, S = q.shape[2], k.shape[2]
        if self.n_kv_heads != self.n_heads:
            # Expanding KV heads is portable across SDPA backends (enable_gqa is not on every kernel).
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if past == 0 and (self.window is None or self.window >= T):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if T == 1 and (self.window is None or self.window >= S):
            return F.scaled_dot_product_attention(q, k, v)  # one new token sees every cached key
        qpos = torch.arange(past, past + T, device=q.device).unsqueeze(1)  # (T, 1)
        kpos = torch.arange(S, device=q.device).unsqueeze(0)  # (1, S)
        allowed = kpos <= qpos
        if self.window is not None:
            allowed = allowed & (kpos > qpos - self.window)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

