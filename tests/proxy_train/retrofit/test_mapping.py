"""The retrofit's weight mapping from attention to every linear mixer kind (proxy_train/retrofit/mapping.py)."""

from __future__ import annotations

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.mixers.attention import SoftmaxAttention
from hyla.proxy_train.retrofit.mapping import MAPPERS, head_rows, map_attention
from hyla.space.presets import resolve_preset

KINDS = sorted(MAPPERS)


def _pair(kind: str, scale: str = "tiny") -> tuple[torch.nn.Module, SoftmaxAttention]:
    torch.manual_seed(0)
    mixer = build_mixer(resolve_preset(f"{kind}-pure@{scale}"), 3)
    attn = SoftmaxAttention.from_layout(resolve_preset(f"transformer@{scale}"), 3)
    return mixer, attn


def test_head_rows_cut_tile_and_group() -> None:
    # one wide head over two attention heads of 4: both heads' rows, cut to 6 or tiled to 12
    assert head_rows(1, 6, 2, 4) == [0, 1, 2, 3, 4, 5]
    assert head_rows(1, 12, 2, 4) == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3]
    # as many heads as attention: head j takes head j
    assert head_rows(2, 4, 2, 4) == list(range(8))
    # more heads than attention: heads repeat
    assert head_rows(4, 2, 2, 4) == [0, 1, 0, 1, 4, 5, 4, 5]


@pytest.mark.parametrize("kind", KINDS)
def test_neutral_start_adds_nothing_and_learns(kind: str) -> None:
    mixer, attn = _pair(kind)
    map_attention(mixer, attn, "neutral")
    x = torch.randn(2, 8, 32)
    y, _ = mixer(x)
    assert torch.equal(y, torch.zeros_like(y))
    y.pow(2).sum().backward()  # zero loss gradient at zero output: use a loss with a non-zero slope instead
    mixer.zero_grad()
    (mixer(x)[0] * torch.randn_like(y)).sum().backward()
    grads = {n: p.grad for n, p in mixer.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads, f"{kind}: no parameter gets a gradient at the neutral start"


@pytest.mark.parametrize("kind", ["deltanet", "hgrn2"])
def test_equal_heads_copy_the_projections(kind: str) -> None:
    # at tiny both kinds have 2 heads of 16 = the attention's heads: q, k, v and o copy exactly
    mixer, attn = _pair(kind)
    map_attention(mixer, attn)
    k_name, v_name = ("f_proj", "i_proj") if kind == "hgrn2" else ("k_proj", "v_proj")
    assert torch.equal(mixer.q_proj.weight, attn.q_proj.weight)
    assert torch.equal(getattr(mixer, k_name).weight, attn.k_proj.weight)
    assert torch.equal(getattr(mixer, v_name).weight, attn.v_proj.weight)
    assert torch.equal(mixer.o_proj.weight, attn.o_proj.weight)


def test_repeated_values_sum_back_to_the_attention_output() -> None:
    # retnet at tiny has 2d value rows: each attention value row is copied twice and its o column halved, so
    # o_proj(v_proj x) equals the attention's o_proj(v_proj x)
    mixer, attn = _pair("retnet")
    map_attention(mixer, attn)
    x = torch.randn(5, 32)
    ours = mixer.o_proj(mixer.v_proj(x))
    theirs = attn.o_proj(attn.v_proj(x))
    torch.testing.assert_close(ours, theirs)


def test_gla_keeps_the_first_half_of_the_keys() -> None:
    mixer, attn = _pair("gla")  # one head, head_k_dim 16 = expand_k 0.5 of the two attention heads' 32 rows
    map_attention(mixer, attn)
    assert torch.equal(mixer.q_proj.weight, attn.q_proj.weight[:16])
    assert torch.equal(mixer.k_proj.weight, attn.k_proj.weight[:16])
    assert torch.equal(mixer.v_proj.weight, attn.v_proj.weight)


def test_mamba2_rows() -> None:
    mixer, attn = _pair("mamba2")
    map_attention(mixer, attn)
    I, N = mixer.intermediate_size, mixer.ssm_state_size
    w = mixer.in_proj.weight
    assert torch.equal(w[2 * I:2 * I + N], attn.k_proj.weight)  # B <- k (one group of 32 = both heads)
    assert torch.equal(w[2 * I + N:2 * I + 2 * N], attn.q_proj.weight)  # C <- q


@pytest.mark.parametrize("scale", ["small", "340m"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_maps_at_the_gpu_scales(kind: str, scale: str) -> None:
    mixer, attn = _pair(kind, scale)
    map_attention(mixer, attn, "default")


def test_bad_input() -> None:
    mixer, attn = _pair("gla")
    with pytest.raises(ConfigError, match="retrofit.start"):
        map_attention(mixer, attn, "random")
    with pytest.raises(ConfigError, match="no mapping"):
        map_attention(attn, attn)
