"""Mamba2 (Dao & Gu, 2024) as a hyla mixer: fla's ``Mamba2`` layer with our own pure-PyTorch path.

Math (fla ``Mamba2.torch_forward`` / mamba_ssm): ``in_proj(x) -> [z (I), xBC (I + 2GN), dt (H)]``; depthwise
causal conv + SiLU on xBC; split into ``x`` (H heads of P), ``B``, ``C`` (G groups of N; head h reads group
``h // (H/G)``); ``dt = softplus(dt + dt_bias)`` clamped to ``dt_limit``; per head, with ``A = -exp(A_log)``::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T      (h: P x N, fp32)
    y_t = h_t C_t + D x_t

then ``RMSNormGated(y, z)`` (gate before norm, grouped by G) and ``out_proj``.

Why our own path instead of fla's ``torch_forward``: on CPU that function calls the Triton gated RMSNorm (fails),
its naive SSD materialises (chunk 256)^2 x N tensors per head (far too slow for proxies), it cannot continue a
sequence from a state with more than one token, and its prefill maps heads to B/C groups with ``repeat`` (head
``h`` -> group ``h % G``) while its decode step and mamba_ssm's kernels use ``h // (H/G)``; we follow the kernels.
Our scan is the chunked scalar-decay form (the SSD "attention" within a chunk, a state hand-off between chunks),
device-agnostic. On CUDA, fla's own forward (mamba_ssm kernels) runs only when mamba_ssm is installed and the
call is a fresh prefill or a one-token step (what fla supports); otherwise our path runs there too.

State: ``{"recurrent": fp32 (B, H, P, N), "conv_xbc": (B, I + 2GN, W)}`` in fla's layout (the conv cache keeps
the last W pre-activation inputs), so both paths read each other's states.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import Mamba2
from fla.modules.layernorm_gated import rms_norm_ref

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers.common import FlaMixer, State, chunking, short_conv, use_fla
from hyla.proxy_train.model.mixers.registry import register_mixer

#: Chunk length of the scan: the intra-chunk scores are (C, C) per head.
SSD_CHUNK = 32


def chunk_scalar_decay_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor,
                            initial_state: torch.Tensor | None = None,
                            chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear attention with a scalar decay per head and step: ``S_t = exp(g_t) S_{t-1} + k_t v_t^T``, ``o_t = S_t^T q_t``.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``; log_g: ``(B, T, H)`` (<= 0).
        initial_state: ``(B, H, K, V)`` or None.

    Returns:
        ``(o, S)``: ``o`` ``(B, T, H, V)`` fp32 and the final state ``(B, H, K, V)`` fp32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C, n, pad = chunking(T, chunk, SSD_CHUNK)
    q, k, v, g = (t.float() for t in (q, k, v, log_g))
    if pad:  # padded steps: k = v = 0 and no decay, so the state is untouched
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        g = F.pad(g, (0, 0, 0, pad))
    q, k, v = (t.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))  # (B, H, n, C, *)
    gc = g.reshape(B, n, C, H).permute(0, 3, 1, 2).cumsum(-1)  # (B, H, n, C)
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    L = torch.exp((gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill(~tril, float("-inf")))  # exponents <= 0
    o_intra = (q @ k.transpose(-1, -2) * L) @ v
    q_decay = q * gc.exp().unsqueeze(-1)
    g_last = gc[..., -1:]
    k_decay = k * torch.exp(g_last - gc).unsqueeze(-1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for i in range(n):
        outs.append(o_intra[:, :, i] + q_decay[:, :, i] @ S)
        S = S * g_last[:, :, i].exp().unsqueeze(-1) + k_decay[:, :, i].transpose(-1, -2) @ v[:, :, i]
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2), S


def _fla_fast_path() -> bool:
    """True when fla's Mamba2 would use the mamba_ssm kernels (else it falls back to its naive torch code)."""
    from fla.layers import mamba2 as fla_mamba2

    return bool(fla_mamba2.is_fast_path_available)


@register_mixer("mamba2")
class Mamba2Mixer(FlaMixer, Mamba2):
    """fla ``Mamba2`` (same parameters / state_dict) with hyla's forward contract and a device-agnostic path.

    ``from_layout`` is the shared one: ``MixerKind.fla_names`` renames hyla's ``conv_size`` to ``conv_kernel``.
    """

    CONV_ORDER = ("xbc",)

    @property
    def conv_names(self) -> tuple[str, ...]:
        return self.CONV_ORDER  # Mamba2's conv is always on

    def forward(self, x: torch.Tensor, state: State | None = None,
                use_cache: bool = False) -> tuple[torch.Tensor, State | None]:
        """Mix tokens ``x`` (B, T, D) -> (B, T, D), continuing ``state``; see the module docstring."""
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__}: expected x of shape (B, T, D), got {tuple(x.shape)}")
        if state and state["recurrent"].shape[0] != x.shape[0]:  # would broadcast a batch-1 state silently
            raise ConfigError(f"{type(self).__name__} state: batch {state['recurrent'].shape[0]} does not match "
                              f"input batch {x.shape[0]}")
        if use_fla(x) and _fla_fast_path() and (not state or x.shape[1] == 1):
            return self._fla_forward(x, state, use_cache)
        return self._cpu_forward(x, state, use_cache)

    def _fla_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        """fla's forward; Mamba2 keeps one conv tensor (not a tuple), so the generic bridge is not used."""
        from fla.models.utils import Cache

        cache = None
        if state or use_cache:
            cache = Cache()
            if state:  # fla's decode updates both caches in place: hand it copies, our states are values
                cache.update(recurrent_state=state["recurrent"].clone(), conv_state=state["conv_xbc"].clone(),
                             layer_idx=self.layer_idx, offset=0)
        y, _, cache = Mamba2.forward(self, hidden_states=x, past_key_values=cache, use_cache=use_cache)
        if not use_cache:
            return y, None
        entry = cache[self.layer_idx]
        return y, {"recurrent": entry["recurrent_state"].float(), "conv_xbc": entry["conv_state"]}

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        Bsz, T, _ = x.shape
        I, H, P, N, G = self.intermediate_size, self.num_heads, self.head_dim, self.ssm_state_size, self.n_groups
        z, xbc, dt = self.in_proj(x).split([I, self.conv_dim, H], dim=-1)
        silu = self.activation in ("silu", "swish")
        xbc, conv_cache = short_conv(xbc, self.conv1d.weight, self.conv1d.bias,
                                     state["conv_xbc"] if state else None, "silu" if silu else None, use_cache)
        if not silu:
            xbc = self.act(xbc)
        xs, Bm, Cm = xbc.split([I, G * N, G * N], dim=-1)
        xs = xs.reshape(Bsz, T, H, P).float()
        # Head h reads group h // (H / G), as mamba_ssm's kernels and fla's decode step do.
        Bm = Bm.reshape(Bsz, T, G, N).repeat_interleave(H // G, dim=2)
        Cm = Cm.reshape(Bsz, T, G, N).repeat_interleave(H // G, dim=2)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(self.dt_limit[0], self.dt_limit[1])  # (B, T, H)
        log_g = dt * -torch.exp(self.A_log.float())
        prev = state["recurrent"].transpose(-1, -2) if state else None  # fla keeps (P, N); the scan uses (N, P)
        y, S = chunk_scalar_decay_scan(Cm, Bm.float() * dt.unsqueeze(-1), xs, log_g, prev)
        y = y + xs * self._get_D(expand_to_head_dim=True).float()
        y = y.reshape(Bsz, T, I)
        if self.rmsnorm:
            y = rms_norm_ref(y, self.norm.weight, None, z=z, eps=self.norm.eps, group_size=self.norm.group_size,
                             norm_before_gate=self.norm.norm_before_gate)
        else:
            y = y * (F.silu(z.float()) if silu else self.act(z.float()))  # fla's ACT2FN silu is Triton-only
        out = self.out_proj(y.to(x.dtype))
        if not use_cache:
            return out, None
        return out, {"recurrent": S.transpose(-1, -2).contiguous(), "conv_xbc": conv_cache}


__all__ = ["Mamba2Mixer", "chunk_scalar_decay_scan"]
