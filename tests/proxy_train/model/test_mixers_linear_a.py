"""GLA, RetNet, HGRN, HGRN-2 mixers (CPU paths) and the shared helpers in ``proxy_train/mixers/common.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fla.layers
from fla.ops.gla.naive import naive_recurrent_gla
from fla.ops.hgrn.naive import naive_recurrent_hgrn
from fla.ops.retention.naive import naive_retention

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers import build_mixer, mixer_class
from hyla.proxy_train.model.mixers.common import from_fla_cache, short_conv, state_nbytes, to_fla_cache
from hyla.proxy_train.model.mixers.gla import GLAMixer
from hyla.proxy_train.model.mixers.retnet import parallel_retention, retention_log_decay
from hyla.proxy_train.model.mixers.scans import chunk_diag_scan, chunk_gated_linear_attn
from hyla.space.cost import layer_memory, mixer_params
from hyla.space.layout import Layout
from hyla.space.mixer_kinds import get_mixer_kind

D = 64
# (kind, option overrides): every kind, short conv on and off where the kind has it, several head layouts
CASES = [
    ("gla", {}),
    ("gla", {"use_short_conv": True, "num_heads": 2}),
    ("retnet", {}),
    ("retnet", {"num_heads": 4, "expand_v": 1.0}),
    ("hgrn", {}),
    ("hgrn", {"use_short_conv": True, "expand_ratio": 2}),
    ("hgrn2", {}),
    ("hgrn2", {"use_short_conv": True, "expand_ratio": 16}),
]
IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in o.items()) or 'default'}" for k, o in CASES]


def make_layout(kind: str, options: dict) -> Layout:
    # layer 0 is attention so the mixer under test sits at index 1 (exercises layer_idx > 0 in the cache bridge)
    return Layout(layers=("attn", {"mixer": kind, "options": options}), d_model=D, vocab_size=64, mlp_hidden=2 * D,
                  num_heads=4)


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[Layout, torch.nn.Module]:
    kind, options = request.param
    layout = make_layout(kind, options)
    torch.manual_seed(0)
    module = build_mixer(layout, 1)
    # larger random norm/bias weights than fla's init so every parameter visibly matters in the checks below
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return layout, module


def test_registry_class_and_shape(case):
    layout, m = case
    kind = layout.layers[1].mixer
    assert isinstance(m, mixer_class(kind))
    assert isinstance(m, getattr(fla.layers, get_mixer_kind(kind).fla_class))
    x = torch.randn(2, 37, D)
    y, state = m(x)
    assert y.shape == x.shape and y.dtype == x.dtype and state is None
    assert torch.isfinite(y).all()


def test_causal(case):
    _, m = case
    x = torch.randn(2, 40, D)
    y, _ = m(x)
    for t in (0, 17):
        x2 = x.clone()
        x2[:, t] += torch.randn(2, D)
        y2, _ = m(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=0)
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-4  # the token itself does matter


@pytest.mark.parametrize("splits", [(17, 1, 1, 14), (1, 16, 20)])
def test_cached_decode_equals_full(case, splits):
    _, m = case
    x = torch.randn(2, sum(splits), D)
    y_full, state_full = m(x, use_cache=True)
    ys, state, t = [], None, 0
    for n in splits:
        y, state = m(x[:, t:t + n], state, use_cache=True)
        ys.append(y)
        t += n
    torch.testing.assert_close(torch.cat(ys, 1), y_full, atol=1e-5, rtol=1e-4)
    assert state.keys() == state_full.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, state_full[key], atol=1e-5, rtol=1e-4)
        else:
            assert value == state_full[key] == x.shape[1]  # RetNet's "pos"


def test_state_is_not_mutated_and_none_without_cache(case):
    _, m = case
    x = torch.randn(1, 9, D)
    _, state = m(x, use_cache=True)
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    _, s2 = m(x[:, :1], state, use_cache=False)
    assert s2 is None
    for k, v in state.items():
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_bytes_equal_cost_formula(case, dtype):
    layout, m = case
    m = m.to(dtype)
    kind = layout.layers[1].mixer
    _, state = m(torch.randn(1, 11, D, dtype=dtype), use_cache=True)
    mem = layer_memory(layout, 1, context=11, dtype=str(dtype).removeprefix("torch."))
    assert state_nbytes(state) == mem.recurrent_bytes + mem.conv_bytes
    assert state["recurrent"].nbytes == mem.recurrent_bytes
    # recurrent states are fp32 except HGRN's (model dtype); conv caches are in the model dtype with W columns
    assert state["recurrent"].dtype == (dtype if kind == "hgrn" else torch.float32)
    convs = [v for k, v in state.items() if k.startswith("conv_")]
    assert bool(convs) == bool(getattr(m, "use_short_conv", False))
    for c in convs:
        assert c.dtype == dtype and c.shape[-1] == m.conv_size and c.shape[0] == 1


def test_params_match_formula_and_fla(case):
    layout, m = case
    kind = layout.layers[1].mixer
    n = sum(p.numel() for p in m.parameters())
    assert n == mixer_params(layout, 1)
    spec = layout.layers[1]
    plain = getattr(fla.layers, get_mixer_kind(kind).fla_class)(hidden_size=D, **get_mixer_kind(kind).fla_kwargs(
        D, spec.option_dict()))
    assert n == sum(p.numel() for p in plain.parameters())
    # our state_dict is fla's own: it loads strictly into the plain fla layer, with identical shapes
    plain.load_state_dict(m.state_dict(), strict=True)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_gradients_flow(case):
    _, m = case
    x = torch.randn(2, 33, D, requires_grad=True)
    y, _ = m(x)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_from_layout_refuses_other_kind():
    layout = make_layout("gla", {})
    with pytest.raises(ConfigError, match=r"layers\[0\]\.mixer"):
        GLAMixer.from_layout(layout, 0)


def test_gla_grouped_kv_heads_decode():
    """num_kv_heads < num_heads (fla's MQA repeat) is not a hyla option but the CPU path supports it."""
    torch.manual_seed(1)
    m = GLAMixer(hidden_size=D, num_heads=4, num_kv_heads=2, use_short_conv=True, layer_idx=0)
    x = torch.randn(2, 30, D)
    y, _ = m(x)
    y1, s = m(x[:, :13], use_cache=True)
    y2, _ = m(x[:, 13:], s, use_cache=True)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-5, rtol=1e-4)


# -- the numerical kernels against fla's own naive references ------------------------------------------------------
@pytest.mark.parametrize("T", [1, 16, 37])
def test_chunk_gla_matches_fla_naive(T):
    torch.manual_seed(T)
    B, H, K, V = 2, 3, 8, 5
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    g = F.logsigmoid(3 * torch.randn(B, T, H, K))
    h0 = torch.randn(B, H, K, V)
    o, s = chunk_gated_linear_attn(q, k, v, g, K ** -0.5, h0)
    o_ref, s_ref = naive_recurrent_gla(q, k, v, g, h0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-4)


def test_chunk_gla_strong_gates_stay_finite():
    """Gates near -100 per step would overflow a factorised exp(G_t) exp(-G_s); the pairwise form does not."""
    B, T, H, K = 1, 48, 1, 4
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, K)
    g = torch.full((B, T, H, K), -100.0)
    o, s = chunk_gated_linear_attn(q, k, v, g, 1.0)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    # with full decay each output only sees its own key/value
    torch.testing.assert_close(o, (q * k).sum(-1, keepdim=True) * v, atol=1e-5, rtol=1e-4)


def test_retention_forms_match_fla_naive():
    torch.manual_seed(0)
    B, T, H, K, V = 2, 40, 4, 8, 6
    q, k, v = torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    ref = naive_retention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    log_decay = retention_log_decay(H)
    torch.testing.assert_close(parallel_retention(q, k, v, log_decay, K ** -0.5), ref, atol=1e-5, rtol=1e-4)
    o, _ = chunk_gated_linear_attn(q, k, v, log_decay[None, None, :, None], K ** -0.5)
    torch.testing.assert_close(o, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("T", [1, 23, 64])
def test_diag_scan_matches_fla_naive(T):
    torch.manual_seed(T)
    x, g, h0 = torch.randn(2, T, 7), F.logsigmoid(torch.randn(2, T, 7)), torch.randn(2, 7)
    o, h = chunk_diag_scan(x, g, h0)
    o_ref, h_ref = naive_recurrent_hgrn(x, g, h0, output_final_state=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(h, h_ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bias,activation", [(False, None), (True, "silu")])
def test_short_conv_matches_definition(bias, activation):
    torch.manual_seed(0)
    B, T, C, W = 2, 19, 6, 4
    x, w = torch.randn(B, T, C), torch.randn(C, 1, W)
    b = torch.randn(C) if bias else None
    y, cache = short_conv(x, w, b, activation=activation, output_final_state=True)
    ref = torch.zeros(B, T, C)
    for t in range(T):  # y_t = sum_j w[:, j] * x_{t - (W-1) + j}, zero before the sequence
        for j in range(W):
            if t - (W - 1) + j >= 0:
                ref[:, t] += x[:, t - (W - 1) + j] * w[:, 0, j]
    ref = ref + (b if bias else 0)
    ref = F.silu(ref) if activation else ref
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # fla keeps the last W inputs (pre-activation), most recent in column W-1
    torch.testing.assert_close(cache, x[:, -W:].transpose(1, 2))
    _, short = short_conv(x[:, :2], w, b, activation=activation, output_final_state=True)
    assert torch.equal(short[..., :2], torch.zeros(B, C, 2)) and torch.equal(short[..., 2:], x[:, :2].transpose(1, 2))
    # continuing from a cache equals the one-shot convolution
    y1, c1 = short_conv(x[:, :7], w, b, activation=activation, output_final_state=True)
    y2, c2 = short_conv(x[:, 7:8], w, b, c1, activation=activation, output_final_state=True)
    y3, c3 = short_conv(x[:, 8:], w, b, c2, activation=activation, output_final_state=True)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), y, atol=1e-6, rtol=1e-6)
    assert torch.equal(c3, cache)


def test_fla_cache_bridge_round_trip():
    state = {"recurrent": torch.randn(2, 3, 4, 5), "conv_q": torch.randn(2, 8, 4), "conv_k": torch.randn(2, 8, 4),
             "pos": 17}
    cache = to_fla_cache(3, state, ("q", "k"))
    assert cache.get_seq_length(3) == 17  # RetNet reads its rotary offset from here
    assert cache[3]["recurrent_state"] is state["recurrent"]
    back = from_fla_cache(cache, 3, ("q", "k"), with_pos=True)
    assert back.keys() == state.keys() and back["pos"] == 17
    for key in ("recurrent", "conv_q", "conv_k"):
        assert torch.equal(back[key], state[key])
    assert back["conv_q"] is not state["conv_q"]  # cloned: fla's decode updates conv caches in place


def test_state_batch_mismatch_refused(case):
    _, m = case
    _, state = m(torch.randn(1, 5, D), use_cache=True)
    with pytest.raises(ConfigError, match="batch 1 does not match input batch 2"):
        m(torch.randn(2, 1, D), state, use_cache=True)


# -- fla's own layer forward with its Triton kernels swapped for fla's naive references ---------------------------
def _naive_gla(q, k, v, gk=None, g=None, initial_state=None, output_final_state=False, state_v_first=False,
               **_):
    """fla's gla kernels' contract (incl. state_v_first = [N, H, V, K] states) on ``naive_recurrent_gla``."""
    h0 = initial_state.transpose(-1, -2) if initial_state is not None and state_v_first else initial_state
    o, ht = naive_recurrent_gla(q, k, v, gk if gk is not None else g, h0, output_final_state)
    return o, (ht.transpose(-1, -2) if ht is not None and state_v_first else ht)


def _naive_retention(q, k, v, initial_state=None, output_final_state=False, **_):
    gamma = 1 - 2.0 ** (-5.0 - torch.arange(q.shape[2], dtype=torch.float))
    return naive_recurrent_gla(q, k, v, gamma.log()[:, None].expand_as(q), initial_state, output_final_state)


def _naive_hgrn(x, g, initial_state=None, output_final_state=False, **_):
    o, ht = naive_recurrent_hgrn(x, g, initial_state, output_final_state)
    return o, (ht.to(x.dtype) if ht is not None else None)  # fla's kernels return h_T in the input dtype


def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotary(self, q, k, seqlen_offset=0, **_):
    from fla.modules.rotary import rotary_embedding_ref
    t = torch.arange(seqlen_offset, seqlen_offset + q.shape[1], dtype=torch.float32)
    freqs = torch.outer(t, self.inv_freq)
    return (rotary_embedding_ref(q, freqs.cos(), freqs.sin()), rotary_embedding_ref(k, freqs.cos(), freqs.sin()))


def _conv(self, x, residual=None, mask=None, cache=None, output_final_state=False, **_):
    return short_conv(x if mask is None else x * mask.unsqueeze(-1), self.weight, self.bias, cache,
                      self.activation, output_final_state)


@pytest.fixture
def reference_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    import fla.layers.gla as gla_mod
    import fla.layers.hgrn as hgrn_mod
    import fla.layers.hgrn2 as hgrn2_mod
    import fla.layers.multiscale_retention as ret_mod
    from fla.modules import FusedRMSNormGated, ShortConvolution
    from fla.modules.rotary import RotaryEmbedding

    for mod in (gla_mod, hgrn2_mod):
        monkeypatch.setattr(mod, "chunk_gla", _naive_gla)
        monkeypatch.setattr(mod, "fused_recurrent_gla", _naive_gla)
    monkeypatch.setattr(ret_mod, "chunk_retention", _naive_retention)
    monkeypatch.setattr(ret_mod, "fused_recurrent_retention", _naive_retention)
    monkeypatch.setattr(hgrn_mod, "chunk_hgrn", _naive_hgrn)
    monkeypatch.setattr(hgrn_mod, "fused_recurrent_hgrn", _naive_hgrn)
    monkeypatch.setattr(hgrn_mod, "swiglu", lambda x, y: F.silu(x) * y)
    monkeypatch.setattr(hgrn2_mod, "swish", F.silu)
    monkeypatch.setattr(hgrn2_mod, "rms_norm_linear",
                        lambda x, nw, nb, lw, lb, eps=1e-5, **_: F.linear(_rms(x, nw, eps), lw, lb))
    monkeypatch.setattr(FusedRMSNormGated, "forward", lambda self, x, g, **_: _rms(x, self.weight, self.eps) * F.silu(g))
    monkeypatch.setattr(ShortConvolution, "forward", _conv)
    monkeypatch.setattr(RotaryEmbedding, "forward", _rotary)


def test_fla_layer_forward_matches_cpu_path(case, reference_kernels):
    """fla's own layer forward (kernels swapped for fla's naive references) == our CPU path, through the Cache
    bridge: outputs, states (keys, shapes, layouts) and decoding across paths, both ways."""
    _, m = case
    x = torch.randn(2, 41, D)
    y_fla, s_fla = m._fla_forward(x[:, :40], None, True)
    y_cpu, s_cpu = m._cpu_forward(x[:, :40], None, True)
    torch.testing.assert_close(y_fla, y_cpu, atol=1e-5, rtol=1e-4)
    assert s_fla.keys() == s_cpu.keys()
    for key, value in s_cpu.items():
        if isinstance(value, torch.Tensor):
            assert s_fla[key].shape == value.shape and s_fla[key].dtype == value.dtype, key
            torch.testing.assert_close(s_fla[key], value, atol=1e-5, rtol=1e-4)
        else:
            assert s_fla[key] == value
    # a state made by one path continues correctly in the other
    y1_fla, _ = m._fla_forward(x[:, 40:], s_cpu, True)
    y1_cpu, _ = m._cpu_forward(x[:, 40:], s_fla, True)
    torch.testing.assert_close(y1_fla, y1_cpu, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y1_cpu, m(x)[0][:, 40:], atol=1e-5, rtol=1e-4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    # normwise: fla's fp32 kernels may use TF32 dots, so elementwise tolerances would be flaky
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla Triton kernels)")
@pytest.mark.parametrize("kind,options", CASES, ids=IDS)
def test_fla_forward_matches_cpu_path_on_cuda(kind, options):
    layout = make_layout(kind, options)
    torch.manual_seed(0)
    m = build_mixer(layout, 1).cuda()
    x = torch.randn(2, 100, D, device="cuda")
    y_fla, s_fla = m(x, use_cache=True)
    y_ref, s_ref = m._cpu_forward(x, None, True)
    assert _rel(y_fla, y_ref) < 5e-3
    assert s_fla.keys() == s_ref.keys()
    for key, value in s_ref.items():
        if isinstance(value, torch.Tensor):
            assert s_fla[key].shape == value.shape and _rel(s_fla[key], value) < 5e-3, key
        else:
            assert s_fla[key] == value
    y1, _ = m(x[:, :1], s_fla, use_cache=True)  # one decode step through fla's cache
    y1_ref, _ = m._cpu_forward(x[:, :1], s_ref, True)
    assert _rel(y1, y1_ref) < 5e-3


BOUNDED = [(k, o) for k, o in CASES if k in ("hgrn", "hgrn2")]


@pytest.mark.parametrize("kind,options", BOUNDED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BOUNDED)])
def test_lower_bound_matches_fla_and_is_skipped_in_layer_0(kind, options, reference_kernels):
    """The model's forget-gate lower bound (fla's HGRN models): fla's layer forward with ``lower_bound`` (its
    kernels swapped for the naive references) == our CPU path with it; it changes the output; layer 0 ignores it."""
    layout = make_layout(kind, options)
    torch.manual_seed(0)
    m = build_mixer(layout, 1)
    x = torch.randn(2, 40, D)
    width = layout.lower_bound_shape()[1]
    lb = torch.rand(width) * 0.9 + 0.05
    y_fla, _ = m._fla_forward(x, None, False, lower_bound=lb)
    y_cpu, _ = m(x, lower_bound=lb)
    torch.testing.assert_close(y_fla, y_cpu, atol=1e-5, rtol=1e-4)
    assert (y_cpu - m(x)[0]).abs().max() > 1e-3  # the bound is applied
    first = build_mixer(layout.with_layers([layout.layers[1], layout.layers[0]]), 0)
    first.load_state_dict(m.state_dict())
    torch.testing.assert_close(first(x, lower_bound=lb)[0], first(x)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla Triton kernels)")
@pytest.mark.parametrize("kind,options", BOUNDED, ids=[f"{k}-{i}" for i, (k, _) in enumerate(BOUNDED)])
def test_lower_bound_fla_kernels_match_cpu_path_on_cuda(kind, options):
    layout = make_layout(kind, options)
    torch.manual_seed(0)
    m = build_mixer(layout, 1).cuda()
    x = torch.randn(2, 100, D, device="cuda")
    lb = torch.rand(layout.lower_bound_shape()[1], device="cuda") * 0.9 + 0.05
    assert _rel(m(x, lower_bound=lb)[0], m._cpu_forward(x, None, False, lower_bound=lb)[0]) < 5e-3
