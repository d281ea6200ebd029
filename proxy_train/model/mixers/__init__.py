"""Token-mixer modules, one per kind, built from a Layout layer.

Registry (`registry.py`): each class registers itself with ``@register_mixer(name)`` (which sets its ``KIND``) in
the module named after its kind, imported on first use. Every class has ``from_layout(layout, index) -> nn.Module``
and ``forward(x, state=None, use_cache=False) -> (y, new_state)`` with x, y of shape (B, T, D). Linear mixers
subclass the fla layer (same state_dict as fla); on CUDA they run fla's Triton kernels, on CPU our
pure-PyTorch path. A linear layer with ``attn_heads > 0`` is wrapped in the head-wise hybrid (``headwise``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hyla.proxy_train.model.mixers.registry import HEADWISE, MIXER_NAMES, mixer_class, mixer_module, register_mixer
from hyla.space.layout import ATTN, Layout

if TYPE_CHECKING:
    from torch import nn

__all__ = ["HEADWISE", "MIXER_NAMES", "build_mixer", "mixer_class", "mixer_module", "register_mixer"]


def build_mixer(layout: Layout, index: int) -> nn.Module:
    """The token mixer of layer ``index`` of ``layout`` (whole attention, linear, or head-wise hybrid)."""
    spec = layout.layers[index]
    if spec.mixer != ATTN and spec.attn_heads > 0:
        return mixer_class(HEADWISE).from_layout(layout, index)
    return mixer_class(spec.mixer).from_layout(layout, index)
