"""The real modules' decode states and parameters equal ``hyla.space.cost`` exactly, for every mixer kind.

For each layer kind (every linear mixer, whole attention, windowed attention prefilled past its window, head-wise
layers) we build the module with ``build_mixer`` on CPU, prefill one sequence (B=1) with ``use_cache=True`` and
compare the sum of the state's tensor bytes with ``layer_memory`` (kv + recurrent + conv), in the run's dtype.
"""

from __future__ import annotations

import pytest
import torch

from hyla.proxy_train.model.mixers import build_mixer
from hyla.space.cost import layer_memory, mixer_params
from hyla.space.layout import Layout
from hyla.space.mixer_kinds import LINEAR_MIXERS

D = 64
T = 12  # prefill length; windows below are shorter so that trimming is exercised

LAYERS: list[str | dict] = [
    *LINEAR_MIXERS,
    *({"mixer": kind, "options": {"use_short_conv": True}} for kind in ("gla", "hgrn", "hgrn2")),
    {"mixer": "mamba2", "options": {"n_groups": 2, "state_size": 16}},
    "attn",
    "attn@5",  # prefill (12) longer than the window: only 5 tokens are kept
    "attn@64",  # window longer than the prefill
    "gla+a2",
    "gdn+a1@5",
    "deltanet+a4",
    "mamba2+a2@3",
]


def _id(layer: str | dict) -> str:
    if isinstance(layer, str):
        return layer
    return layer["mixer"] + "-" + "-".join(f"{k}{v}" for k, v in layer["options"].items())


def _nbytes(state: dict) -> int:
    return sum(t.nbytes for t in state.values() if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layer", LAYERS, ids=_id)
def test_state_bytes_and_params_equal_cost(layer: str | dict, dtype: torch.dtype) -> None:
    # GQA on (num_kv_heads 2 of 4) so whole attention layers exercise the kv-head count
    layout = Layout(layers=("attn", layer), d_model=D, vocab_size=64, mlp_hidden=D, num_heads=4, num_kv_heads=2)
    torch.manual_seed(0)
    module = build_mixer(layout, 1).to(dtype)
    assert sum(p.numel() for p in module.parameters()) == mixer_params(layout, 1)
    with torch.no_grad():
        _, state = module(torch.randn(1, T, D, dtype=dtype), use_cache=True)
    expected = layer_memory(layout, 1, context=T, dtype=str(dtype))
    assert _nbytes(state) == expected.total_bytes, {k: (tuple(v.shape), v.dtype) for k, v in state.items()
                                                    if isinstance(v, torch.Tensor)}
    # the split matters too: KV entries are exactly the attention part, the rest is recurrent + conv
    kv = sum(t.nbytes for k, t in state.items() if isinstance(t, torch.Tensor) and k.split(".")[-1] in ("k", "v"))
    assert kv == expected.kv_bytes
    # one more decode step: the state keeps its size for linear mixers and windows, grows by one token otherwise
    with torch.no_grad():
        _, after = module(torch.randn(1, 1, D, dtype=dtype), state, use_cache=True)
    assert _nbytes(after) == layer_memory(layout, 1, context=T + 1, dtype=str(dtype)).total_bytes
