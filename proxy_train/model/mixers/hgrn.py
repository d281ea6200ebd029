"""HGRN (Qin et al. 2023): an elementwise gated linear recurrence, on fla's ``HGRNAttention`` parameters.

CPU math (fla 0.6.0 ``HGRNAttention.forward``): ``i``/``f`` projections (optionally through activation-free short
convs), ``f = logsigmoid(f)`` (with the model's ``lower_bound`` lb from layer 1 on, ``log(lb + (1 - lb)
sigmoid(f))``), ``i = silu(i) * (1 - exp(f))``, the scan
``h_t = exp(f_t) * h_{t-1} + i_t`` over ``D = d_model * expand_ratio`` channels, then
``RMSNorm(h) * swish(g_proj x)`` over all D channels and ``o_proj``. The recurrent state is ``h_T`` ``[B, D]`` in
the model dtype (fla's ``chunk_hgrn`` returns ``o[:, -1]``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fla.layers import HGRNAttention

from hyla.proxy_train.model.mixers.common import FlaMixer, State, bounded_log_gate, rms_norm_gated
from hyla.proxy_train.model.mixers.scans import chunk_diag_scan
from hyla.proxy_train.model.mixers.registry import register_mixer


@register_mixer("hgrn")
class HGRNMixer(FlaMixer, HGRNAttention):
    """fla's HGRNAttention with hyla's ``forward(x, state, use_cache)`` and a pure-PyTorch CPU path.

    State: ``{"recurrent": [B, D] model dtype, "conv_i", "conv_f" (short conv only)}``.
    """

    CONV_ORDER = ("i", "f")

    def _cpu_forward(self, x: torch.Tensor, state: State | None, use_cache: bool,
                     lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, State | None]:
        (i, f), new = self._convs([
            ("i", getattr(self, "i_conv1d", None), self.i_proj(x)),
            ("f", getattr(self, "f_conv1d", None), self.f_proj(x)),
        ], state, use_cache)
        f = bounded_log_gate(F.logsigmoid(f.float()), lower_bound, self.layer_idx)
        # fla's swiglu(i, 1 - f.exp()) = silu(i) * (1 - exp(f)), computed in fp32 and stored in the input dtype
        i = (F.silu(i.float()) * (1 - f.exp())).to(x.dtype)
        h0 = state["recurrent"] if state else None
        o, _ = chunk_diag_scan(i, f, h0)
        o = o.to(x.dtype)
        y = self.o_proj(rms_norm_gated(o, self.g_proj(x), self.g_norm.weight, self.g_norm.eps,
                                       self.g_norm.activation))
        if not use_cache:
            return y, None
        new["recurrent"] = o[:, -1].contiguous()
        return y, new
