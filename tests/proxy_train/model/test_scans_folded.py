"""The folded scans (``mixers.scans``): under ``kernel_path("cores")`` a vmapped training scan runs once over the
replicas folded into the batch, with the values and gradients of the per-replica PyTorch scans. On CPU the
folded function runs the PyTorch scan, so the vmap rule, the fold and the recomputing backward are tested here;
the fla kernels behind them are compared on a GPU (``-m gpu``)."""

from __future__ import annotations

import pytest
import torch
from hyla.proxy_train.model.mixers import scans
from hyla.proxy_train.model.mixers.common import kernel_path
from hyla.proxy_train.probe.replicas import ReplicaStack, replica_losses
from hyla.space.layout import Layout
from torch.func import vmap

R, B, T, H, K, V = 3, 2, 24, 2, 8, 16


def _inputs(kind: str) -> list[torch.Tensor]:
    torch.manual_seed(0)
    q, k = torch.randn(R, B, T, H, K), torch.randn(R, B, T, H, K)
    v = torch.randn(R, B, T, H, V)
    if kind == "gla":
        return [q, k, v, torch.nn.functional.logsigmoid(torch.randn(R, B, T, H, K))]
    q, k = (torch.nn.functional.normalize(t, dim=-1) for t in (q, k))
    beta = torch.rand(R, B, T, H)
    if kind == "delta":
        return [q, k, v, beta]
    return [q, k, v, beta, -torch.rand(R, B, T, H)]


def _scan(kind: str):  # (tensors of one replica) -> o
    if kind == "gla":
        return lambda q, k, v, g: scans.gla_scan(q, k, v, g, K ** -0.5, want_state=False)[0]
    if kind == "delta":
        return lambda q, k, v, beta: scans.delta_scan(q, k, v, beta, None, K ** -0.5, want_state=False)[0]
    return lambda q, k, v, beta, g: scans.delta_scan(q, k, v, beta, g, K ** -0.5, want_state=False)[0]


@pytest.mark.parametrize("kind", ["gla", "delta", "gated_delta"])
def test_folded_scan_matches_the_vmapped_pytorch_scan(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch_scan = "chunk_gated_linear_attn" if kind == "gla" else "chunk_delta_rule"
    calls: list[int] = []
    original = getattr(scans, torch_scan)
    monkeypatch.setattr(scans, torch_scan, lambda *a, **kw: calls.append(a[0].shape[0]) or original(*a, **kw))
    out, grads = [], []
    for path in ("torch", "cores"):
        xs = [t.clone().requires_grad_() for t in _inputs(kind)]
        with kernel_path(path):
            o = vmap(_scan(kind))(*xs)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        out.append(o.detach())
        grads.append([x.grad for x in xs])
    # vmapped: one call seeing a replica's B rows; folded: one call over all R x B rows, recomputed in backward
    assert calls == [B, R * B, R * B]
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-5)
    for g_cores, g_torch in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_cores, g_torch, rtol=1e-4, atol=1e-5)


def test_folded_scan_broadcasts_an_unbatched_gate() -> None:
    """RetNet-style constant decays (not vmapped, broadcast over batch and time) are expanded per replica."""
    q, k, v, _ = _inputs("gla")
    log_decay = -torch.rand(H)[None, None, :, None]
    out = []
    for path in ("torch", "cores"):
        with kernel_path(path):
            out.append(vmap(lambda q, k, v: scans.gla_scan(q, k, v, log_decay, 0.5, want_state=False)[0])(q, k, v))
    torch.testing.assert_close(out[1], out[0].to(out[1].dtype), rtol=1e-5, atol=1e-5)


def test_scans_with_a_state_never_fold() -> None:
    q, k, v, g = (t[0] for t in _inputs("gla"))
    h0 = torch.randn(B, H, K, V)
    with kernel_path("cores"):
        o, S = scans.gla_scan(q, k, v, g, 0.5, h0, want_state=True)
    ref, S_ref = scans.chunk_gated_linear_attn(q, k, v, g, 0.5, h0)
    assert S is not None
    torch.testing.assert_close(o, ref)
    torch.testing.assert_close(S, S_ref)


def test_a_failing_kernel_backward_falls_back_to_the_pytorch_scan() -> None:
    def refuses(*args: object) -> torch.Tensor:
        raise RuntimeError("gated chunk_bwd_dqkwg (see #640)")

    q, k, v, beta, g = (t[0] for t in _inputs("gated_delta"))
    grad_out = torch.randn(B, T, H, V)
    name = "TestScan"
    scans._TORCH_BACKWARD.discard(name)
    with pytest.warns(RuntimeWarning, match="#640"):
        got = scans._grads(name, [refuses, scans._torch_gated_delta], (q, k, v, g, beta), 0.5, grad_out)
    assert name in scans._TORCH_BACKWARD
    leaves = [t.clone().requires_grad_() for t in (q, k, v, g, beta)]
    want = torch.autograd.grad(scans._torch_gated_delta(*leaves, 0.5), leaves, grad_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    scans._TORCH_BACKWARD.discard(name)


def test_stacked_models_train_alike_with_folded_and_pytorch_scans() -> None:
    """Every mixer that folds (GLA, HGRN-2, DeltaNet, GDN), among attention and non-folding kinds, in a replica
    stack: the same losses and gradients with ``cores`` as with ``torch``."""
    lay = Layout(layers=("gla", "attn", "gdn", "hgrn2", "deltanet", "retnet", "hgrn"), d_model=32, vocab_size=128,
                 mlp_hidden=64, num_heads=2, name="fold-test")
    x = torch.randint(0, lay.vocab_size, (2, 3, 32))
    y = torch.where(torch.rand(2, 3, 32) < 0.3, torch.randint(0, lay.vocab_size, (2, 3, 32)), -100)
    runs = []
    for path in ("torch", "cores"):
        stack = ReplicaStack(lay, [0, 1], 0.1, 0.0, torch.device("cpu"))
        with kernel_path(path):
            loss = replica_losses(stack(x), y)
        loss.sum().backward()
        runs.append((loss.detach(), [p.grad for p in stack.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_blocks_keep_the_folded_scans_opaque() -> None:
    """torch.compile of the vmapped blocks (``compile_blocks``, the GPU probe's default) with ``cores``: the scan
    ops stay opaque (no graph break), and the step equals the eager PyTorch path. Two compiles, ~20 s on CPU."""
    from torch._dynamo.utils import counters

    lay = Layout(layers=("gla", "gdn"), d_model=32, vocab_size=128, mlp_hidden=64, num_heads=2, name="fold-compile")
    x = torch.randint(0, lay.vocab_size, (2, 2, 16))
    y = torch.randint(0, lay.vocab_size, (2, 2, 16))
    torch._dynamo.reset()  # compile afresh: graphs cached by earlier tests would hide this test's compiles
    counters.clear()
    runs = []
    for path, compiled in (("torch", False), ("cores", True)):
        stack = ReplicaStack(lay, [0, 1], 0.1, 0.0, torch.device("cpu"), compile_blocks=compiled)
        with kernel_path(path):
            loss = replica_losses(stack(x), y)
        loss.sum().backward()
        runs.append((loss.detach(), [p.grad for p in stack.parameters()]))
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 2
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(runs[1][1], runs[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_folded_fla_kernels_train_like_the_pytorch_scans_on_cuda() -> None:
    """fla's chunk kernels folded over the replica axis (bf16 autocast, as the GPU probe runs them) against the
    PyTorch scans on the same device and precision: close losses and gradients for every folding mixer."""
    lay = Layout(layers=("gla", "attn", "gdn", "hgrn2", "deltanet"), d_model=64, vocab_size=128, mlp_hidden=128,
                 num_heads=2, name="fold-gpu")
    dev = torch.device("cuda")
    x = torch.randint(0, lay.vocab_size, (3, 4, 128), device=dev)
    y = torch.where(torch.rand(3, 4, 128, device=dev) < 0.3, torch.randint_like(x, lay.vocab_size), -100)
    runs = []
    for path in ("torch", "cores"):
        stack = ReplicaStack(lay, [0, 1, 2], 0.1, 0.0, dev)
        with kernel_path(path), torch.autocast("cuda", torch.bfloat16):
            loss = replica_losses(stack(x), y)
        loss.sum().backward()
        runs.append((loss.detach().float(), [p.grad.float() for p in stack.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-2, atol=1e-2)
    for a, b in zip(runs[1][1], runs[0][1]):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.98 or b.norm() < 1e-6, float(cos)
