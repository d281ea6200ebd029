"""SoftmaxAttention and the head-wise hybrid layer on CPU: shapes, causality, windows, GQA, RoPE, cached decode."""

from __future__ import annotations

import math

import pytest
import torch

from hyla.config import ConfigError
from hyla.space.layout import Layout
from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.mixers.attention import SoftmaxAttention, apply_rope, rope_cos_sin
from hyla.proxy_train.model.mixers.common import state_nbytes

D = 32


def _layout(layers: list[str], heads: int = 4, kv: int | None = None) -> Layout:
    return Layout(layers=tuple(layers), d_model=D, vocab_size=64, mlp_hidden=64, num_heads=heads, num_kv_heads=kv)


def _reference(m: SoftmaxAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit softmax attention with a python loop over queries (independent of the SDPA/mask code)."""
    B, T, _ = x.shape
    H, Hkv, hd = m.n_heads, m.n_kv_heads, m.head_dim
    q = m.q_proj(x).view(B, T, H, hd).transpose(1, 2)
    k = m.k_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
    v = m.v_proj(x).view(B, T, Hkv, hd).transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(T), hd, m.rope_theta)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    out = torch.zeros(B, H, T, hd)
    for h in range(H):
        kh, vh = k[:, h // (H // Hkv)], v[:, h // (H // Hkv)]
        for t in range(T):
            lo = 0 if m.window is None else max(0, t - m.window + 1)
            scores = (q[:, h, t:t + 1] @ kh[:, lo:t + 1].transpose(-1, -2)) / math.sqrt(hd)
            out[:, h, t] = (scores.softmax(-1) @ vh[:, lo:t + 1])[:, 0]
    return m.o_proj(out.transpose(1, 2).reshape(B, T, H * hd))


@pytest.mark.parametrize("kv,window", [(4, None), (2, None), (1, None), (4, 3), (2, 5), (1, 64)])
def test_matches_reference(kv: int, window: int | None) -> None:
    torch.manual_seed(0)
    m = SoftmaxAttention(D, 4, kv, window=window)
    x = torch.randn(2, 12, D)
    y, state = m(x)
    assert y.shape == x.shape and state is None
    torch.testing.assert_close(y, _reference(m, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("window", [None, 4])
def test_causal(window: int | None) -> None:
    torch.manual_seed(0)
    m = SoftmaxAttention(D, 4, 2, window=window)
    x = torch.randn(1, 16, D)
    y = m(x)[0]
    x2 = x.clone()
    x2[:, 9] += 1.0
    y2 = m(x2)[0]
    torch.testing.assert_close(y[:, :9], y2[:, :9])
    assert not torch.allclose(y[:, 9:], y2[:, 9:])
    if window is not None:  # outside the window the perturbation is invisible again
        torch.testing.assert_close(y[:, 9 + window:], y2[:, 9 + window:])


@pytest.mark.parametrize("kv,window,prefill", [(4, None, 5), (2, 3, 5), (1, 4, 2), (2, 6, 9)])
def test_cached_decode_equals_full(kv: int, window: int | None, prefill: int) -> None:
    torch.manual_seed(0)
    m = SoftmaxAttention(D, 4, kv, window=window)
    x = torch.randn(2, 14, D)
    full = m(x)[0]
    y, state = m(x[:, :prefill], use_cache=True)
    outs = [y]
    for t in range(prefill, 10):  # token by token ...
        y, state = m(x[:, t:t + 1], state, use_cache=True)
        outs.append(y)
    y, state = m(x[:, 10:], state, use_cache=True)  # ... then a chunk on top of a cache
    outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    kept = 14 if window is None else min(14, window)
    assert state["k"].shape == (2, kv, kept, D // 4) and state["v"].shape == state["k"].shape
    assert state["pos"] == 14


def test_window_prefill_longer_than_window_keeps_window() -> None:
    m = SoftmaxAttention(D, 4, 2, window=5)
    _, state = m(torch.randn(1, 17, D), use_cache=True)
    assert state["k"].shape[2] == 5 and state["k"].is_contiguous()
    assert state_nbytes(state) == m.state_bytes(17, torch.float32) == 2 * 2 * 8 * 5 * 4


def test_rope_is_relative() -> None:
    """Scores depend only on the distance between positions (a shift of both leaves q.k unchanged)."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> torch.Tensor:
        ci, si = rope_cos_sin(torch.tensor([i]), 8, 10000.0)
        cj, sj = rope_cos_sin(torch.tensor([j]), 8, 10000.0)
        return (apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5))
    c0, s0 = rope_cos_sin(torch.tensor([0]), 8, 10000.0)
    torch.testing.assert_close(apply_rope(q, c0, s0), q)  # position 0 is the identity


def test_from_layout_and_params() -> None:
    lay = _layout(["gla", "attn@8", "attn"], heads=4, kv=2)
    m = build_mixer(lay, 1)
    assert isinstance(m, SoftmaxAttention) and m.window == 8 and m.n_kv_heads == 2 and m.head_dim == 8
    assert sorted(n for n, _ in m.named_parameters()) == ["k_proj.weight", "o_proj.weight", "q_proj.weight",
                                                         "v_proj.weight"]
    assert sum(p.numel() for p in m.parameters()) == 2 * D * D + 2 * D * 16
    with pytest.raises(ConfigError, match="not 'attn'"):
        SoftmaxAttention.from_layout(lay, 0)
    with pytest.raises(ConfigError, match="num_kv_heads"):
        SoftmaxAttention(D, 4, 3)
    with pytest.raises(ConfigError, match="window"):
        SoftmaxAttention(D, 4, window=0)


def test_grads_flow() -> None:
    m = SoftmaxAttention(D, 4, 2, window=3)
    x = torch.randn(2, 8, D, requires_grad=True)
    m(x)[0].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


# -- head-wise hybrid --------------------------------------------------------------------------------------------

HEADWISE = ["gla+a1", "deltanet+a2@4", "gdn+a2", "hgrn+a1@6"]


def _headwise(layer: str) -> tuple[Layout, torch.nn.Module]:
    lay = _layout(["attn", layer], heads=4)
    return lay, build_mixer(lay, 1)


@pytest.mark.parametrize("layer", HEADWISE)
def test_headwise_shapes_causal_and_decode(layer: str) -> None:
    from hyla.proxy_train.model.mixers.headwise import HeadwiseHybrid

    torch.manual_seed(0)
    lay, m = _headwise(layer)
    assert isinstance(m, HeadwiseHybrid)
    spec = lay.layers[1]
    assert m.attn.n_heads == m.attn.n_kv_heads == spec.attn_heads and m.attn.head_dim == lay.head_dim
    assert m.attn.window == spec.window
    x = torch.randn(2, 12, D)
    full, st = m(x)
    assert full.shape == x.shape and st is None
    x2 = x.clone()
    x2[:, 7] += 1.0
    torch.testing.assert_close(m(x2)[0][:, :7], full[:, :7])
    y, state = m(x[:, :5], use_cache=True)
    outs = [y]
    for t in range(5, 12):
        y, state = m(x[:, t:t + 1], state, use_cache=True)
        outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-4, rtol=1e-3)
    assert {"attn.k", "attn.v", "attn.pos"} <= set(state) and any(k.startswith("lin.") for k in state)
    assert state["attn.pos"] == 12


@pytest.mark.parametrize("layer", HEADWISE[:2])
def test_headwise_params_and_merge(layer: str) -> None:
    from hyla.proxy_train.model.mixers import mixer_class

    lay, m = _headwise(layer)
    k, hd = lay.layers[1].attn_heads, lay.head_dim
    plain = mixer_class(lay.layers[1].mixer).from_layout(lay, 1)
    n = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for p in plain.parameters()) + 4 * D * k * hd + 2 * D
    torch.testing.assert_close(m.norm_lin.weight, torch.full((D,), 1 / math.sqrt(2)))
    # The output is exactly the sum of the two normalised branches.
    x = torch.randn(1, 6, D)
    y_lin, _ = m.linear(x)
    y_att, _ = m.attn(x)
    torch.testing.assert_close(m(x)[0], m.norm_lin(y_lin) + m.norm_attn(y_att))
    with pytest.raises(ConfigError, match="not a head-wise layer"):
        type(m).from_layout(lay, 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("window", [None, 7])
def test_cuda_matches_cpu(window: int | None) -> None:
    torch.manual_seed(0)
    m = SoftmaxAttention(D, 4, 2, window=window)
    x = torch.randn(2, 40, D)
    ref = m(x)[0]
    mc = m.cuda()
    xc = x.cuda()
    torch.testing.assert_close(mc(xc)[0].cpu(), ref, atol=1e-4, rtol=1e-3)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, st = mc(xc[:, :30], use_cache=True)
        y2, st = mc(xc[:, 30:], st, use_cache=True)
    out = torch.cat([y, y2], 1).float().cpu()
    assert ((out - ref).norm() / ref.norm()).item() < 2e-2
    assert st["k"].dtype == torch.bfloat16 and st["k"].shape[2] == (40 if window is None else window)
