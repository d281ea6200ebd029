"""DeltaNet, Gated DeltaNet and Mamba2 mixers on CPU, checked against fla's own reference code."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fla.layers
from fla.modules.layernorm_gated import rms_norm_ref
from fla.ops.delta_rule.naive import delta_rule_recurrence
from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.mixers.deltanet import l2norm
from hyla.proxy_train.model.mixers.scans import chunk_delta_rule
from hyla.proxy_train.model.mixers.gdn import gdn_log_decay
from hyla.proxy_train.model.mixers.mamba2 import chunk_scalar_decay_scan
from hyla.space.layout import Layout

D = 64
CASES = [
    ("deltanet", {}),
    ("deltanet", {"use_short_conv": False, "num_heads": 2}),
    ("deltanet", {"use_beta": False, "expand_v": 2.0, "num_heads": 4}),
    ("gdn", {}),
    ("gdn", {"num_heads": 2, "head_dim": 16, "expand_v": 1.0, "use_short_conv": False}),
    ("mamba2", {}),
    ("mamba2", {"head_dim": 16, "num_heads": 8, "n_groups": 2, "state_size": 16, "conv_size": 3}),
]
IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in o.items()) or 'default'}" for k, o in CASES]
FLA_CLASS = {"deltanet": fla.layers.DeltaNet, "gdn": fla.layers.GatedDeltaNet, "mamba2": fla.layers.Mamba2}


def _layout(kind: str, options: dict) -> Layout:
    # index 1, so that layer_idx > 0 is exercised
    return Layout(layers=("attn", {"mixer": kind, "options": options}), d_model=D, vocab_size=64, mlp_hidden=D,
                  num_heads=4)


@pytest.fixture(params=CASES, ids=IDS)
def case(request: pytest.FixtureRequest) -> tuple[str, torch.nn.Module]:
    kind, options = request.param
    torch.manual_seed(0)
    m = build_mixer(_layout(kind, options), 1)
    with torch.no_grad():  # move 1-d params (norms, biases, D) off their init so each one matters below
        for name, p in m.named_parameters():
            if p.dim() == 1 and name not in ("A_log", "dt_bias"):
                p.add_(0.3 * torch.randn_like(p))
    return kind, m


# -- scans against fla's naive recurrences ----------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 4, 32])
@pytest.mark.parametrize("gated", [False, True])
def test_chunk_delta_rule_matches_naive(chunk: int, gated: bool) -> None:
    torch.manual_seed(0)
    B, T, H, K, V = 2, 37, 3, 8, 6
    q, k = l2norm(torch.randn(B, T, H, K)), l2norm(torch.randn(B, T, H, K))
    v, beta, h0 = torch.randn(B, T, H, V), torch.rand(B, T, H), torch.randn(B, H, K, V)
    if gated:
        g = -3 * torch.rand(B, T, H)
        ref_o, ref_s = naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0.clone(),
                                                        output_final_state=True)
    else:
        g = None
        ref_o, ref_s = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)), initial_state=h0.clone())
        ref_o = ref_o.transpose(1, 2)
    o, s = chunk_delta_rule(q, k, v, beta, g, K ** -0.5, h0, chunk=chunk)
    torch.testing.assert_close(o, ref_o, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(s, ref_s, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 5, 32])
def test_scalar_decay_scan_matches_loop(chunk: int) -> None:
    torch.manual_seed(0)
    B, T, H, K, V = 2, 23, 2, 5, 3
    q, k, v, g, h0 = (torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V),
                      -torch.rand(B, T, H), torch.randn(B, H, K, V))
    S, outs = h0.clone(), []
    for t in range(T):
        S = S * g[:, t].exp()[..., None, None] + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o, s = chunk_scalar_decay_scan(q, k, v, g, h0, chunk=chunk)
    torch.testing.assert_close(o, torch.stack(outs, 1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s, S, atol=1e-5, rtol=1e-4)


# -- whole layers against references built from fla's pieces ---------------------------------------------------
def _conv(x: torch.Tensor, conv: torch.nn.Conv1d, silu: bool) -> torch.Tensor:
    """Causal depthwise conv written independently of common.short_conv (left padding W-1)."""
    W = conv.weight.shape[-1]
    y = F.conv1d(F.pad(x.transpose(1, 2), (W - 1, 0)), conv.weight, conv.bias, groups=x.shape[-1]).transpose(1, 2)
    return F.silu(y) if silu else y


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _delta_reference(kind: str, m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fla's layer forward (default options) with its Triton pieces replaced by fla's naive recurrences."""
    B, T, _ = x.shape
    q, k, v = m.q_proj(x), m.k_proj(x), m.v_proj(x)
    if m.use_short_conv:
        q, k, v = _conv(q, m.q_conv1d, True), _conv(k, m.k_conv1d, True), _conv(v, m.v_conv1d, True)
    else:
        q, k, v = F.silu(q), F.silu(k), F.silu(v)
    H = m.num_heads
    q = F.normalize(q.view(B, T, H, -1), dim=-1, eps=0)
    k = F.normalize(k.view(B, T, H, -1), dim=-1, eps=0)
    v = v.view(B, T, -1, m.head_v_dim)
    if kind == "deltanet":
        beta = m.b_proj(x).sigmoid() if m.use_beta else torch.ones(B, T, H)
        o = delta_rule_recurrence(*(t.transpose(1, 2) for t in (q, k, v, beta)))[0].transpose(1, 2)
        o = _rms(o, m.o_norm.weight, m.o_norm.eps)
    else:
        g = -m.A_log.exp() * F.softplus(m.a_proj(x) + m.dt_bias)
        o, _ = naive_recurrent_gated_delta_rule(q, k, v, m.b_proj(x).sigmoid(), g)
        o = _rms(o, m.o_norm.weight, m.o_norm.eps) * F.silu(m.g_proj(x).view_as(o))
    return m.o_proj(o.reshape(B, T, -1))


def _fla_mamba2_torch(m: torch.nn.Module) -> torch.nn.Module:
    """Make fla's own ``Mamba2.torch_forward`` runnable on CPU: its gated norm and SiLU are Triton modules."""
    n = m.norm
    n.forward = lambda y, z=None: rms_norm_ref(y, n.weight, None, z=z, eps=n.eps, group_size=n.group_size,
                                           norm_before_gate=n.norm_before_gate)
    m.act = F.silu
    return m


def test_layer_matches_fla_reference(case) -> None:
    kind, m = case
    x = torch.randn(2, 21, D)
    y = m(x)[0]
    if kind == "mamba2":
        ref = _fla_mamba2_torch(m)
        if m.n_groups == 1:  # fla's naive prefill maps heads to groups with repeat (h % G); see mamba2.py
            torch.testing.assert_close(y, ref.torch_forward(x)[0], atol=1e-5, rtol=1e-4)
        # fla's single-step decode from our prefill state (both index groups as h // (H/G))
        _, st = m(x[:, :20], use_cache=True)
        step, conv, ssm = ref.torch_forward(x[:, 20:], {"conv_state": st["conv_xbc"],
                                                        "recurrent_state": st["recurrent"]}, use_cache=True)
        torch.testing.assert_close(step, y[:, 20:], atol=1e-5, rtol=1e-4)
        _, st2 = m(x, use_cache=True)
        torch.testing.assert_close(conv, st2["conv_xbc"])
        torch.testing.assert_close(ssm, st2["recurrent"], atol=1e-5, rtol=1e-4)
    else:
        torch.testing.assert_close(y, _delta_reference(kind, m, x), atol=1e-5, rtol=1e-4)


# -- generic mixer contract --------------------------------------------------------------------------------------
def test_shape_and_causality(case) -> None:
    _, m = case
    x = torch.randn(2, 19, D)
    y, state = m(x)
    assert y.shape == x.shape and state is None
    x2 = x.clone()
    x2[:, 11] += 1.0
    y2 = m(x2)[0]
    torch.testing.assert_close(y2[:, :11], y[:, :11])
    assert not torch.allclose(y2[:, 11:], y[:, 11:])


def test_cached_decode_equals_full(case) -> None:
    kind, m = case
    x = torch.randn(2, 24, D)
    full = m(x)[0]
    y, state = m(x[:, :6], use_cache=True)
    outs = [y]
    for t in range(6, 10):
        y, state = m(x[:, t:t + 1], state, use_cache=True)
        outs.append(y)
    y, state = m(x[:, 10:], state, use_cache=True)  # a multi-token chunk continuing a state
    outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-4)
    assert state["recurrent"].dtype == torch.float32
    assert all(t.dtype == x.dtype for n, t in state.items() if n.startswith("conv"))
    _, whole = m(x, use_cache=True)
    assert set(whole) == set(state)
    for name in state:
        torch.testing.assert_close(state[name], whole[name], atol=1e-5, rtol=1e-4)


def test_state_layout_is_fla(case) -> None:
    kind, m = case
    _, st = m(torch.randn(3, 5, D), use_cache=True)
    rec = st["recurrent"]
    if kind == "deltanet":
        assert rec.shape == (3, m.num_heads, m.head_k_dim, m.head_v_dim)
        assert set(st) == {"recurrent"} | ({"conv_q", "conv_k", "conv_v"} if m.use_short_conv else set())
    elif kind == "gdn":  # fla's GatedDeltaNet uses state_v_first=True
        assert rec.shape == (3, m.num_v_heads, m.head_v_dim, m.head_k_dim)
    else:
        assert rec.shape == (3, m.num_heads, m.head_dim, m.ssm_state_size)
        assert st["conv_xbc"].shape == (3, m.conv_dim, m.conv_kernel_size)


def test_grads_flow(case) -> None:
    kind, m = case
    x = torch.randn(2, 12, D, requires_grad=True)
    m(x)[0].square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"


def test_state_dict_is_fla(case) -> None:
    """The plain fla layer with the same constructor arguments loads our weights exactly, strict."""
    kind, m = case
    plain = FLA_CLASS[kind](hidden_size=D, layer_idx=1, **_ctor_args(kind, m))
    plain.load_state_dict(m.state_dict(), strict=True)
    assert sorted(plain.state_dict()) == sorted(m.state_dict())
    for name, t in plain.state_dict().items():
        torch.testing.assert_close(t, m.state_dict()[name])
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in m.parameters())


def _ctor_args(kind: str, m: torch.nn.Module) -> dict:
    """fla constructor arguments reproducing module ``m`` (read back from the module, not from the case)."""
    if kind == "deltanet":
        return {"num_heads": m.num_heads, "expand_k": m.expand_k, "expand_v": m.expand_v, "use_beta": m.use_beta,
                "use_short_conv": m.use_short_conv, "conv_size": m.conv_size}
    if kind == "gdn":
        return {"num_heads": m.num_heads, "head_dim": m.head_dim, "expand_v": m.expand_v,
                "use_short_conv": m.use_short_conv, "conv_size": m.conv_size}
    return {"num_heads": m.num_heads, "head_dim": m.head_dim, "expand": m.expand, "state_size": m.ssm_state_size,
            "n_groups": m.n_groups, "conv_kernel": m.conv_kernel_size}


def test_gdn_gate_is_fla() -> None:
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate

    a, A_log, bias = torch.randn(2, 5, 3), torch.randn(3), torch.randn(3)
    torch.testing.assert_close(gdn_log_decay(a, A_log, bias), naive_gdn_gate(a, A_log, bias).float())


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="mamba2"):
        _layout("mamba2", {"num_heads": 3})
    with pytest.raises(ConfigError, match="deltanet"):
        _layout("deltanet", {"num_heads": 7})


def test_state_batch_mismatch_is_refused(case) -> None:
    _, m = case
    _, st = m(torch.randn(1, 4, D), use_cache=True)
    with pytest.raises(ConfigError, match="batch 1 does not match input batch 2"):
        m(torch.randn(2, 1, D), st, use_cache=True)


def test_bf16_runs() -> None:
    torch.manual_seed(0)
    for kind in ("deltanet", "gdn", "mamba2"):
        m = build_mixer(_layout(kind, {}), 1).to(torch.bfloat16)
        x = torch.randn(1, 5, D, dtype=torch.bfloat16)
        y, st = m(x, use_cache=True)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
        assert st["recurrent"].dtype == torch.float32
        assert all(t.dtype == torch.bfloat16 for n, t in st.items() if n.startswith("conv"))


# -- CUDA: fla's kernels (through the cache bridge) against our torch path ----------------------------------------
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["deltanet", "gdn", "mamba2"])
def test_cuda_fla_forward_matches_torch_path(kind: str) -> None:
    torch.manual_seed(0)
    m = build_mixer(_layout(kind, {}), 1).cuda()
    x = torch.randn(2, 96, D, device="cuda")
    x1 = torch.randn(2, 1, D, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        y_fla, st_fla = m(x, use_cache=True)  # fla kernels (chunk mode for T > 64)
        y_ref, st_ref = m._cpu_forward(x, None, True)
        assert set(st_fla) == set(st_ref)
        for name in st_ref:
            assert st_fla[name].shape == st_ref[name].shape and st_fla[name].dtype == st_ref[name].dtype, name
        # each path continues the other's state (the layouts are interchangeable)
        a, _ = m(x1, st_ref, use_cache=True)
        b, _ = m._cpu_forward(x1, st_fla, True)
    assert _rel(y_fla, y_ref) < 2e-2
    assert _rel(st_fla["recurrent"], st_ref["recurrent"]) < 2e-2
    assert _rel(a, b) < 2e-2
