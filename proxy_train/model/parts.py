"""The block's own parts, the norms and the SwiGLU MLP, each with fla's fused Triton kernel as an option.

The parts keep torch's parameter names (``weight``; ``gate_proj``/``up_proj``/``down_proj``), so checkpoints,
exports and fla's models load the same weights whichever path trained them. With ``fused`` set, a part runs fla's
kernel where `triton_kernels_on` says Triton runs and its plain torch arithmetic elsewhere:

- `RMSNorm`: fla's ``rms_norm``; called with a ``residual`` it also adds the residual in the same kernel
  (``prenorm``: it returns the normed sum and the sum, the sum kept in fp32 as fla's models keep it);
- `SwiGLU`: fla's ``swiglu_linear``: ``silu(gate) * up`` and the down projection in one autograd function that
  keeps neither the product nor ``silu(gate)`` for the backward pass (recomputed there), which saves activation
  memory.

Inside a ``torch.compile`` region the parts take the torch path: Inductor fuses those element-wise ops itself.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "SwiGLU", "triton_kernels_on"]


def triton_kernels_on(x: torch.Tensor) -> bool:
    """True when fla's Triton kernels should run on ``x``: a CUDA tensor (or any tensor under Triton's CPU
    interpreter, ``TRITON_INTERPRET=1``, which the CPU tests use), outside torch.compile's tracing."""
    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
    return on_device and not torch.compiler.is_compiling()


@functools.cache
def _fla(name: str) -> Callable[..., Any]:
    """fla's functional kernel ``name``, imported on first use (fla's import is slow; CPU runs never need it)."""
    if name == "rms_norm":
        from fla.modules.norm.layernorm import rms_norm

        return rms_norm
    from fla.modules.activations import swiglu_linear

    return swiglu_linear


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` (same parameter, same arithmetic) that can run fla's fused kernel and fuse a residual
    add: ``norm(x, residual) -> (norm(x + residual), x + residual)``.

    Attributes:
        fused: use fla's ``rms_norm`` where `triton_kernels_on`.
    """

    fused: bool = False

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.fused and triton_kernels_on(x):
            return _fla("rms_norm")(x, self.weight, None, residual=residual, eps=self.eps,
                                    prenorm=residual is not None, residual_in_fp32=True)
        if residual is None:
            return super().forward(x)
        total = residual + x  # (the fp32 residual stream plus a block's output)
        return super().forward(total), total


class SwiGLU(nn.Module):
    """SwiGLU MLP: ``down(silu(gate(x)) * up(x))``, no biases (as LLaMA / fla's GatedMLP).

    Args:
        d: model width.
        hidden: inner width (``Layout.mlp_hidden``).

    Attributes:
        fused: use fla's ``swiglu_linear`` (fla's ``GatedMLP(fuse_swiglu=True)``) where `triton_kernels_on`.
    """

    fused: bool = False

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and triton_kernels_on(x):
            return _fla("swiglu_linear")(self.gate_proj(x), self.up_proj(x), self.down_proj.weight, None)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
