"""Head-wise hybrid layer: a linear mixer and k softmax-attention heads side by side on the same input.

A layer ``gla+a2`` (``LayerSpec(mixer="gla", attn_heads=2)``) runs

    y = norm_lin(linear(x)) + norm_attn(attn_k(x))

where ``linear`` is the kind's fla layer at full width (exactly the module a pure ``gla`` layer would use) and
``attn_k`` is softmax attention with k query heads and k key/value heads of the layout's head size
``hd = d_model / num_heads`` (q, k, v: d×(k·hd), o: (k·hd)×d), optionally windowed. ``norm_lin``/``norm_attn``
are RMSNorms with a weight of size d each.

Design choice (why this form):

- **Parallel heads, not a split of the width.** "k of H heads are softmax" is read as a budget of attention
  heads, the unit the KV cache is paid in: the layer's KV cache is ``2·k·hd·min(L, window)`` bytes, i.e. k/H of a
  whole attention layer's (with Hkv = H), so head-wise layers trade memory continuously between pure linear
  (k=0) and full attention (k=H). The linear mixer keeps its full width, so its recurrent state (and its
  quality) do not depend on k; the softmax heads are an *addition* that buys exact recall. This is the Hymba
  (Dong et al., 2024) arrangement: attention and SSM heads in parallel within one layer on the same input.
- **Per-branch RMSNorm before summing.** The two branches have very different output scales (linear mixers'
  outputs grow with the state; attention outputs are convex mixtures of values). Normalising each branch and
  summing with learnable per-channel weights (Hymba's β1/β2) keeps one branch from drowning the other and lets
  training choose the mix per channel.
- **Init.** Both norm weights start at 1/√2: two roughly independent unit-RMS branches then sum to unit RMS,
  the same scale a single normalised branch would have, so the residual stream starts as in other layers and
  neither branch is favoured.

Alternatives not taken: splitting d into (H−k) linear heads + k attention heads (changes the linear mixer's
parameters and state with k, and fla layers do not expose per-head widths uniformly); a learned scalar gate
instead of norms (one branch can collapse early); a shared output projection (would break the 1:1 weight
mapping of the linear mixer to fla).

State: a flat dict with the linear mixer's entries prefixed ``lin.`` and the attention's prefixed ``attn.``
(``attn.pos`` is the int position); its tensor bytes are the linear mixer's state plus the k-head KV cache.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from hyla.config import ConfigError
from hyla.space.layout import Layout
from hyla.proxy_train.model.mixers.attention import SoftmaxAttention
from hyla.proxy_train.model.mixers.registry import mixer_class, register_mixer

State = dict[str, Any]
_LIN, _ATTN = "lin.", "attn."


@register_mixer("headwise")
class HeadwiseHybrid(nn.Module):
    """A linear mixer plus a k-head softmax-attention branch, merged by per-branch RMSNorms.

    Args:
        linear: the linear mixer module (``forward(x, state, use_cache) -> (y, state)``), full width.
        attn: the softmax branch (k heads).
        d_model: width of both outputs.
        eps: RMSNorm epsilon.
        layer_idx: layer index (for messages).
    """

    def __init__(self, linear: nn.Module, attn: SoftmaxAttention, d_model: int, eps: float = 1e-6,
                 layer_idx: int | None = None) -> None:
        super().__init__()
        self.linear = linear
        self.attn = attn
        self.layer_idx = layer_idx
        self.norm_lin = nn.RMSNorm(d_model, eps=eps)
        self.norm_attn = nn.RMSNorm(d_model, eps=eps)
        with torch.no_grad():  # see the module docstring: two unit-RMS branches sum to unit RMS
            self.norm_lin.weight.fill_(1 / math.sqrt(2))
            self.norm_attn.weight.fill_(1 / math.sqrt(2))

    @classmethod
    def from_layout(cls, layout: Layout, index: int) -> HeadwiseHybrid:
        """Layer ``index`` of ``layout``, which must be a linear kind with ``attn_heads > 0``."""
        spec = layout.layers[index]
        if spec.is_attention or spec.attn_heads < 1:
            raise ConfigError(f"layers[{index}]: {spec.to_obj()!r} is not a head-wise layer; expected a linear "
                              "mixer with attn_heads >= 1 (e.g. 'gla+a2')")
        linear = mixer_class(spec.mixer).from_layout(layout, index)
        attn = SoftmaxAttention(layout.d_model, spec.attn_heads, spec.attn_heads, layout.head_dim, spec.window,
                                layout.rope_theta, layer_idx=index)
        return cls(linear, attn, layout.d_model, layout.norm_eps, layer_idx=index)

    def forward(self, x: torch.Tensor, state: State | None = None, use_cache: bool = False,
                lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, State | None]:
        """Run both branches on ``x`` (B, T, D) and merge; ``state`` is this layer's flat dict (or None);
        ``lower_bound`` goes to the linear branch (HGRN/HGRN-2 forget gates)."""
        lin_state = attn_state = None
        if state is not None:
            lin_state = {k[len(_LIN):]: v for k, v in state.items() if k.startswith(_LIN)} or None
            attn_state = {k[len(_ATTN):]: v for k, v in state.items() if k.startswith(_ATTN)} or None
        extra = {} if lower_bound is None else {"lower_bound": lower_bound}
        y_lin, new_lin = self.linear(x, state=lin_state, use_cache=use_cache, **extra)
        y_attn, new_attn = self.attn(x, state=attn_state, use_cache=use_cache)
        # Norms in fp32 (bf16 mean-of-squares loses precision), result back in the branch dtype.
        y = (self.norm_lin(y_lin.float()) + self.norm_attn(y_attn.float())).to(y_lin.dtype)
        if not use_cache:
            return y, None
        new_state: State = {_LIN + k: v for k, v in (new_lin or {}).items()}
        new_state.update({_ATTN + k: v for k, v in (new_attn or {}).items()})
        return y, new_state
