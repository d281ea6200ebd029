"""Token-mixer modules, one per kind, built from a Layout layer.

Registry: kind name -> "module:Class". Every class has ``from_layout(layout, index) -> nn.Module`` and
``forward(x, state=None, use_cache=False) -> (y, new_state)`` with x, y of shape (B, T, D). Linear mixers
subclass the fla layer (same state_dict as fla); on CUDA they run fla's Triton kernels, on CPU our
pure-PyTorch path. A linear layer with ``attn_heads > 0`` is wrapped in the head-wise hybrid.
"""

from __future__ import annotations

import importlib

from torch import nn

from hyla.space.layout import ATTN, Layout

MIXER_CLASSES: dict[str, str] = {
    "attn": "hyla.proxy_train.mixers.attention:SoftmaxAttention",
    "hgrn": "hyla.proxy_train.mixers.hgrn:HGRNMixer",
    "retnet": "hyla.proxy_train.mixers.retnet:RetNetMixer",
    "gla": "hyla.proxy_train.mixers.gla:GLAMixer",
    "hgrn2": "hyla.proxy_train.mixers.hgrn2:HGRN2Mixer",
    "deltanet": "hyla.proxy_train.mixers.deltanet:DeltaNetMixer",
    "gdn": "hyla.proxy_train.mixers.gdn:GatedDeltaNetMixer",
    "mamba2": "hyla.proxy_train.mixers.mamba2:Mamba2Mixer",
}
HEADWISE_CLASS = "hyla.proxy_train.mixers.headwise:HeadwiseHybrid"


def mixer_class(kind: str) -> type[nn.Module]:
    """The module class registered for ``kind`` (imported on first use)."""
    try:
        target = MIXER_CLASSES[kind]
    except KeyError:
        raise KeyError(f"unknown mixer {kind!r}; expected one of {', '.join(MIXER_CLASSES)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_mixer(layout: Layout, index: int) -> nn.Module:
    """The token mixer of layer ``index`` of ``layout`` (whole attention, linear, or head-wise hybrid)."""
    spec = layout.layers[index]
    if spec.mixer != ATTN and spec.attn_heads > 0:
        module, cls = HEADWISE_CLASS.split(":")
        return getattr(importlib.import_module(module), cls).from_layout(layout, index)
    return mixer_class(spec.mixer).from_layout(layout, index)
