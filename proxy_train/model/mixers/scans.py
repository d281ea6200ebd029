"""The linear recurrences of the mixers: chunked PyTorch scans, and fla's kernels as replica-foldable functions.

- :func:`chunk_gated_linear_attn` (GLA, HGRN-2, RetNet), :func:`chunk_diag_scan` (HGRN) and
  :func:`chunk_delta_rule` (DeltaNet, Gated DeltaNet) are the pure-PyTorch scans of the mixers' own forward
  (``_cpu_forward``): any device, any initial state, exact fp32 math.
- :func:`gla_scan` and :func:`delta_scan` are what the mixers call. Inside ``kernel_path("cores")`` (the recall
  probe on a GPU) a training scan (no state in or out) runs fla's chunk kernel as a custom op (``hyla::gla_scan``,
  ``hyla::delta_scan``, ``hyla::gated_delta_scan``) with a ``vmap`` rule: under ``torch.func.vmap``
  (``proxy_train.replicas``: R probes of one layout as one vmapped model) the replica axis is folded into the
  batch, so one kernel serves every replica. Triton kernels have no batching rule of their own, which is why
  stacked probes ran the PyTorch scans (tens of thousands of tiny kernels per step,
  ``benchmarks/bench_stack_step.py --profile``). Otherwise they are the scans above.

Custom ops are opaque to ``torch.compile``, so compiled blocks (``replicas.ReplicaStack(compile_blocks=True)``)
fuse the layers' own elementwise work around them. The backward is a second op that recomputes the kernel's
forward under autograd (fla's public functions only). Where fla refuses a backward (GatedDeltaNet's on Hopper
with 3.4 <= triton < 3.7.1 and no tilelang, fla issue #640), the gradient is that of the PyTorch scan, once
warned. On the CPU the ops run the PyTorch scans, which is how the folding itself is tested without a GPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from hyla.proxy_train.model.mixers.common import chunking, kernels_in_effect

#: Chunk length of the chunked scans: pairwise decay tensors are (C, C, K) per head, so keep C small, on a GPU too
#: (inside a CUDA graph more, smaller kernels cost little; the probe's speed by chunk: docs/gpu-notes.md).
CPU_CHUNK = 16



#: Chunk length of the delta-rule scan; the triangular solve is (C, C) per head and chunk.
DELTA_CHUNK = 32


def chunk_gated_linear_attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor,
                            scale: float, initial_state: torch.Tensor | None = None,
                            chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention with a per-key-channel decay, chunked (fla ``naive_recurrent_gla`` math).

    Recurrence: ``S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T``, ``o_t = (scale q_t)^T S_t``. Within a chunk the
    pairwise decays ``exp(G_t - G_s)`` (``G`` = cumulative log gate, ``s <= t``) are formed explicitly, so every
    exponent is <= 0 and nothing overflows however strong the gates; chunks are chained through ``S``.

    Args:
        q, k: ``(B, T, H, K)``; v: ``(B, T, H, V)``.
        log_g: log forget gates, broadcastable to ``(B, T, H, K)`` (RetNet passes a constant per head).
        scale: query scale.
        initial_state: ``(B, H, K, V)`` or None.

    Returns:
        ``(o, S)``: ``o`` ``(B, T, H, V)`` in fp32, final state ``(B, H, K, V)`` fp32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C, n, pad = chunking(T, chunk, CPU_CHUNK)
    q, k, v = (t.float() for t in (q, k, v))
    g = log_g.float().expand(B, T, H, K)
    if pad:  # padded steps have k = v = 0 and g = 0 (no decay): they leave the state untouched
        q, k, v, g = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v, g))
    # (B, H, n, C, *)
    q, k, v, g = (t.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v, g))
    q = q * scale
    gc = g.cumsum(dim=3)  # G_t within each chunk
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = gc.unsqueeze(4) - gc.unsqueeze(3)  # (B, H, n, C_t, C_s, K): G_t - G_s
    decay = torch.exp(diff.masked_fill(~causal[:, :, None], float("-inf")))
    attn = torch.einsum("bhntk,bhnsk,bhntsk->bhnts", q, k, decay)
    o_intra = attn @ v  # (B, H, n, C, V)
    q_decay = q * gc.exp()  # reads the state left by the previous chunk
    g_last = gc[:, :, :, -1:]  # (B, H, n, 1, K)
    k_decay = k * torch.exp(g_last - gc)  # each key decayed to the chunk end
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for i in range(n):
        outs.append(o_intra[:, :, i] + q_decay[:, :, i] @ S)
        S = g_last[:, :, i, 0].exp().unsqueeze(-1) * S + k_decay[:, :, i].transpose(-1, -2) @ v[:, :, i]
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2), S


def chunk_diag_scan(x: torch.Tensor, log_g: torch.Tensor, initial_state: torch.Tensor | None = None,
                    chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise gated scan ``h_t = exp(g_t) * h_{t-1} + x_t`` (HGRN), chunked like the function above.

    Args:
        x, log_g: ``(B, T, D)``.
        initial_state: ``(B, D)`` or None.

    Returns:
        ``(h, h_T)`` in fp32: all states ``(B, T, D)`` and the last ``(B, D)``.
    """
    B, T, D = x.shape
    C, n, pad = chunking(T, chunk, CPU_CHUNK)
    x, g = x.float(), log_g.float()
    if pad:
        x, g = (F.pad(t, (0, 0, 0, pad)) for t in (x, g))
    x, g = x.reshape(B, n, C, D), g.reshape(B, n, C, D)
    gc = g.cumsum(dim=2)
    causal = torch.ones(C, C, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp((gc.unsqueeze(3) - gc.unsqueeze(2)).masked_fill(~causal[:, :, None], float("-inf")))
    h_intra = torch.einsum("bntsd,bnsd->bntd", decay, x)
    h = x.new_zeros(B, D) if initial_state is None else initial_state.float()
    outs = []
    for i in range(n):
        hi = h_intra[:, i] + gc[:, i].exp() * h.unsqueeze(1)
        outs.append(hi)
        h = hi[:, -1]
    out = torch.stack(outs, dim=1).reshape(B, n * C, D)[:, :T]
    return out, out[:, -1] if T else h


def chunk_delta_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     log_g: torch.Tensor | None, scale: float, initial_state: torch.Tensor | None = None,
                     chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Gated) delta rule, chunked WY form; the math of fla's ``naive_chunk_gated_delta_rule``.

    Recurrence per head: ``S = exp(g_t) S``; ``v'_t = beta_t (v_t - S^T k_t)``; ``S += k_t v'_t^T``;
    ``o_t = S^T (scale q_t)``. ``log_g=None`` is plain DeltaNet (no decay).

    Within a chunk of length C (cumulative log gate ``G``, pairwise decay ``L_ts = exp(G_t - G_s)`` for s <= t,
    all exponents <= 0 so nothing overflows), the pseudo-values solve the unit lower-triangular system
    ``(I + strict_lower(diag(beta) K K^T * L)) U = beta V - diag(beta) (K * exp(G)) S_prev``, split as
    ``U = u - w S_prev`` with ``u = A^{-1} beta V`` and ``w = A^{-1} (beta K exp(G))`` computed once per chunk.

    Args:
        q, k: ``(B, T, H, K)`` (already normalised); v: ``(B, T, H, V)``; beta: ``(B, T, H)``.
        log_g: ``(B, T, H)`` log decays (<= 0) or None.
        scale: query scale.
        initial_state: ``(B, H, K, V)`` or None.

    Returns:
        ``(o, S)``: ``o`` ``(B, T, H, V)`` fp32, final state ``(B, H, K, V)`` fp32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C, n, pad = chunking(T, chunk, DELTA_CHUNK)
    q, k, v, beta = (t.float() for t in (q, k, v, beta))
    g = torch.zeros_like(beta) if log_g is None else log_g.float()
    if pad:  # padded steps: k = v = beta = 0 and no decay, so they leave the state untouched
        q, k, v = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (q, k, v))
        beta, g = F.pad(beta, (0, 0, 0, pad)), F.pad(g, (0, 0, 0, pad))
    # (B, H, n, C, *)
    q, k, v = (t.reshape(B, n, C, H, -1).permute(0, 3, 1, 2, 4) for t in (q, k, v))
    beta, g = (t.reshape(B, n, C, H).permute(0, 3, 1, 2) for t in (beta, g))
    q = q * scale
    gc = g.cumsum(-1)  # (B, H, n, C)
    tril = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    L = torch.exp((gc.unsqueeze(-1) - gc.unsqueeze(-2)).masked_fill(~tril, float("-inf")))  # (B, H, n, C, C)
    k_beta = k * beta.unsqueeze(-1)
    strict = (k_beta @ k.transpose(-1, -2) * L).tril(-1)
    A = strict + torch.eye(C, device=q.device)
    u = torch.linalg.solve_triangular(A, v * beta.unsqueeze(-1), upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(A, k_beta * gc.exp().unsqueeze(-1), upper=False, unitriangular=True)
    qk = q @ k.transpose(-1, -2) * L  # causal (diagonal included) intra-chunk scores, decayed
    q_decay = q * gc.exp().unsqueeze(-1)
    g_last = gc[..., -1:]  # (B, H, n, 1)
    k_decay = k * torch.exp(g_last - gc).unsqueeze(-1)
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    outs = []
    for i in range(n):
        v_new = u[:, :, i] - w[:, :, i] @ S  # (B, H, C, V)
        outs.append(q_decay[:, :, i] @ S + qk[:, :, i] @ v_new)
        S = S * g_last[:, :, i].exp().unsqueeze(-1) + k_decay[:, :, i].transpose(-1, -2) @ v_new
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, V)[:, :, :T]
    return o.transpose(1, 2), S




# -- fla's kernels with the replica axis folded into the batch ------------------------------------------------------
def _fla_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float) -> torch.Tensor:
    from fla.ops.gla import chunk_gla

    return chunk_gla(q, k, v, g, scale=scale)[0]


def _torch_gla(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float) -> torch.Tensor:
    return chunk_gated_linear_attn(q, k, v, g, scale)[0].to(q.dtype)


def _fla_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               scale: float) -> torch.Tensor:
    from fla.ops.delta_rule import chunk_delta_rule as fla_chunk_delta_rule

    return fla_chunk_delta_rule(q, k, v, beta, scale=scale)[0]


def _torch_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                 scale: float) -> torch.Tensor:
    return chunk_delta_rule(q, k, v, beta, None, scale)[0].to(q.dtype)


def _fla_gated_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                     scale: float) -> torch.Tensor:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    return chunk_gated_delta_rule(q, k, v, g, beta, scale=scale)[0]


def _torch_gated_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                       scale: float) -> torch.Tensor:
    return chunk_delta_rule(q, k, v, beta, g, scale)[0].to(q.dtype)


#: Scans whose fla backward raised; their gradients come from the PyTorch scan (module docstring).
_TORCH_BACKWARD: set[str] = set()


@contextmanager
def _autograd_inside_op() -> Iterator[None]:
    """Autograd inside a custom op's kernel, which the dispatcher runs with the autograd keys excluded: the
    recomputing backward needs a graph. Only the autocast keys stay excluded (the inputs are already cast)."""
    excluded = torch._C._dispatch_tls_local_exclude_set()
    keep = torch._C.DispatchKeySet(torch._C.DispatchKey.Undefined)
    for key in (torch._C.DispatchKey.AutocastCPU, torch._C.DispatchKey.AutocastCUDA):
        if excluded.has(key):
            keep = keep | torch._C.DispatchKeySet(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), keep), torch.enable_grad():
        yield


def _grads(name: str, fns: list[Callable[..., torch.Tensor]], tensors: Sequence[torch.Tensor], scale: float,
           grad_out: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of the scan at ``tensors`` for ``grad_out``, by recomputing its forward under autograd with the
    first of ``fns`` that works (a failure of all but the last is remembered for ``name`` and warned once)."""
    for i, fn in enumerate(fns):
        leaves = [t.detach().requires_grad_() for t in tensors]
        try:
            with _autograd_inside_op():
                return [g.contiguous() for g in torch.autograd.grad(fn(*leaves, scale), leaves, grad_out)]
        except RuntimeError as e:
            if i == len(fns) - 1:
                raise
            _TORCH_BACKWARD.add(name)
            warnings.warn(f"{name}: fla's backward failed ({str(e).splitlines()[0][:160]}); gradients come from "
                          "the PyTorch scan", RuntimeWarning, stacklevel=2)
    raise AssertionError("unreachable")


def _fold(t: torch.Tensor, dim: int | None, n: int) -> torch.Tensor:
    """A vmapped argument as one physical batch: replica axis first, then merged with the batch axis."""
    t = t.expand(n, *t.shape) if dim is None else t.movedim(dim, 0)
    return t.reshape(n * t.shape[1], *t.shape[2:])


def _scan_op(name: str, fla_fn: Callable[..., torch.Tensor], torch_fn: Callable[..., torch.Tensor]) -> Any:
    """``hyla::<name>(xs, scale) -> o``: the scan of ``xs`` (q, k, v, ...) as a custom op (opaque to
    torch.compile), running ``fla_fn`` on CUDA and ``torch_fn`` elsewhere; its vmap rule folds the replica axis
    into the batch and its backward is the op ``hyla::<name>_grads`` (module docstring)."""
    def forward(xs: list[torch.Tensor], scale: float) -> torch.Tensor:
        return (fla_fn if xs[0].is_cuda else torch_fn)(*xs, scale).contiguous()

    def grads(grad_out: torch.Tensor, xs: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
        fns = [fla_fn, torch_fn] if xs[0].is_cuda and name not in _TORCH_BACKWARD else [torch_fn]
        return _grads(name, fns, xs, scale, grad_out)

    op = torch.library.custom_op(f"hyla::{name}", forward, mutates_args=(),
                                 schema="(Tensor[] xs, float scale) -> Tensor")
    grads_op = torch.library.custom_op(f"hyla::{name}_grads", grads, mutates_args=(),
                                       schema="(Tensor grad_out, Tensor[] xs, float scale) -> Tensor[]")
    op.register_fake(lambda xs, scale: xs[0].new_empty(*xs[0].shape[:-1], xs[2].shape[-1]))
    grads_op.register_fake(lambda grad_out, xs, scale: [t.new_empty(t.shape) for t in xs])

    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.save_for_backward(*inputs[0])
        ctx.scale = inputs[1]

    op.register_autograd(lambda ctx, grad_out: (grads_op(grad_out, list(ctx.saved_tensors), ctx.scale), None),
                         setup_context=setup_context)

    def fold_replicas(info: Any, in_dims: tuple[Any, ...], xs: list[torch.Tensor],
                      scale: float) -> tuple[torch.Tensor, int]:
        n = info.batch_size
        out = op([_fold(t, d, n) for t, d in zip(xs, in_dims[0])], scale)
        return out.reshape(n, -1, *out.shape[1:]), 0

    op.register_vmap(fold_replicas)
    return op


_GLA = _scan_op("gla_scan", _fla_gla, _torch_gla)
_DELTA = _scan_op("delta_scan", _fla_delta, _torch_delta)
_GATED_DELTA = _scan_op("gated_delta_scan", _fla_gated_delta, _torch_gated_delta)


def _folds(x: torch.Tensor, initial_state: torch.Tensor | None, want_state: bool) -> bool:
    """Whether a scan runs as a folded kernel: ``kernel_path("cores")``, a training scan (no state in or out),
    and on CUDA under 16-bit autocast (fla's delta-rule kernels refuse fp32)."""
    if initial_state is not None or want_state or kernels_in_effect() != "cores":
        return False
    return not x.is_cuda or torch.is_autocast_enabled("cuda")


def _kernel_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.get_autocast_dtype("cuda") if x.is_cuda else x.dtype


def gla_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_g: torch.Tensor, scale: float,
             initial_state: torch.Tensor | None = None,
             want_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated linear attention (arguments and math of :func:`chunk_gated_linear_attn`).

    Returns ``(o, S)``; ``S`` is None when not ``want_state`` and the scan ran folded (module docstring), and ``o``
    is then in the kernel's dtype (bf16 under autocast) rather than fp32."""
    if not _folds(q, initial_state, want_state):
        return chunk_gated_linear_attn(q, k, v, log_g, scale, initial_state)
    dt = _kernel_dtype(q)
    g = log_g.float().expand(*q.shape).contiguous()
    return _GLA([q.to(dt), k.to(dt), v.to(dt), g], scale), None


def delta_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, log_g: torch.Tensor | None,
               scale: float, initial_state: torch.Tensor | None = None,
               want_state: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Gated) delta rule (arguments and math of :func:`chunk_delta_rule`); returns as :func:`gla_scan`."""
    if not _folds(q, initial_state, want_state):
        return chunk_delta_rule(q, k, v, beta, log_g, scale, initial_state)
    dt = _kernel_dtype(q)
    q, k, v, beta = q.to(dt), k.to(dt), v.to(dt), beta.to(dt)
    if log_g is None:
        return _DELTA([q, k, v, beta], scale), None
    return _GATED_DELTA([q, k, v, log_g.float(), beta], scale), None
