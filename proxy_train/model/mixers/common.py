"""Shared pieces of the linear mixers: CPU short convolution, the fla Cache bridge, the forward dispatch.

Contract of every linear mixer module (one per kind in this package: gla.py, retnet.py, hgrn.py, hgrn2.py,
deltanet.py, gdn.py, mamba2.py; their chunked scans are in scans.py):

- The class subclasses the fla layer (``class GLAMixer(FlaMixer, fla.layers.GatedLinearAttention)``), so its
  ``state_dict`` is fla's own and loads 1:1 into the plain fla class. ``from_layout(layout, index)`` builds it from
  ``layout.mixer_options(index)`` with ``hidden_size=layout.d_model`` and ``layer_idx=index``.
- ``forward(x, state=None, use_cache=False) -> (y, new_state)`` with ``x``/``y`` of shape ``(B, T, D)``.
  ``x.is_cuda`` (unless `kernel_path` chose ``torch``) runs fla's own forward (Triton kernels) through :func:`to_fla_cache`/:func:`from_fla_cache`;
  otherwise the subclass's ``_cpu_forward(x, state, use_cache)`` runs: pure PyTorch, same parameters, same math.
  ``_cpu_forward`` is device-agnostic, so benchmarks may call it on CUDA tensors to compare against fla.
- ``new_state`` is None unless ``use_cache``; ``state`` continues a sequence (prefill then step-by-step decode
  equals one full forward).
- State = ``dict[str, Tensor | int]`` for one layer:
  ``"recurrent"``: the recurrent state exactly as fla's layer keeps it (fp32; GLA/HGRN-2 use fla's
  ``state_v_first`` layout ``[B, H, V, K]``, RetNet ``[B, H, K, V]``, HGRN ``[B, D]`` in the model dtype);
  ``"conv_<name>"``: one short-convolution cache ``[B, C, W]`` per convolved projection, in the model dtype,
  keeping W columns like fla (the last W pre-activation inputs; only W-1 are read, fla stores W);
  ``"pos"`` (RetNet only): tokens seen, a python int for the rotary offset; not memory.
  The sum of tensor ``nbytes`` (:func:`state_nbytes`) for one sequence equals ``hyla.space.cost``'s
  recurrent + conv bytes.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers.registry import KERNELS
from hyla.space.layout import Layout
from hyla.space.mixer_kinds import get_mixer_kind

State = dict[str, Any]

_KERNELS: ContextVar[str] = ContextVar("hyla_kernels", default="auto")


_SCAN_CHUNK: ContextVar[int | None] = ContextVar("hyla_scan_chunk", default=None)


@contextmanager
def scan_chunk(length: int | None) -> Iterator[None]:
    """Run the PyTorch chunked scans inside this block with chunks of ``length`` (None = each scan's default).

    Longer chunks mean fewer sequential steps (fewer, larger kernels: what a launch-bound GPU probe wants) and
    larger (C, C) intra-chunk tensors; the result is the same up to rounding."""
    token = _SCAN_CHUNK.set(length)
    try:
        yield
    finally:
        _SCAN_CHUNK.reset(token)


def chunk_length(given: int | None, default: int) -> int:
    """The chunk a scan uses: ``given``, else the `scan_chunk` in effect, else ``default``."""
    return given or _scan_chunk_in_effect() or default


def chunking(length: int, given: int | None, default: int) -> tuple[int, int, int]:
    """How a scan splits ``length`` steps: ``(chunk, chunks, padding)`` with the chunk of `chunk_length`
    (at most ``length``, at least 1) and the padding that completes the last chunk."""
    c = max(1, min(chunk_length(given, default), length))
    n = -(-length // c)
    return c, n, n * c - length


@torch.compiler.assume_constant_result  # torch.compile cannot trace ContextVar.get: read once, at trace time
def _scan_chunk_in_effect() -> int | None:
    return _SCAN_CHUNK.get()


@contextmanager
def kernel_path(name: str) -> Iterator[None]:
    """Run the linear mixers inside this block with ``name`` (one of ``KERNELS``) on CUDA."""
    if name not in KERNELS:
        raise ConfigError(f"kernels: {name!r} is not allowed; expected one of {', '.join(KERNELS)}")
    token = _KERNELS.set(name)
    try:
        yield
    finally:
        _KERNELS.reset(token)


def use_fla(x: torch.Tensor) -> bool:
    """Whether fla's layer forward runs for ``x`` (CUDA, unless `kernel_path` chose ``torch`` or ``cores``)."""
    return x.is_cuda and kernels_in_effect() not in ("torch", "cores")


@torch.compiler.assume_constant_result  # as `_scan_chunk_in_effect`
def kernels_in_effect() -> str:
    """The `kernel_path` in effect (``auto`` outside any)."""
    return _KERNELS.get()


def state_nbytes(state: State | None) -> int:
    """Bytes of the tensors in a layer state (non-tensor entries such as ``"pos"`` are not memory)."""
    if not state:
        return 0
    return sum(v.nbytes for v in state.values() if isinstance(v, torch.Tensor))


# -- short convolution ---------------------------------------------------------------------------------------------
def short_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               cache: torch.Tensor | None = None, activation: str | None = None,
               output_final_state: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Depthwise causal convolution, the math of fla's ``ShortConvolution`` (``causal_conv1d``).

    Args:
        x: input ``(B, T, C)``.
        weight: ``(C, 1, W)`` (the ``nn.Conv1d`` weight) or ``(C, W)``.
        bias: ``(C,)`` or None.
        cache: the previous ``W`` pre-activation inputs ``(B, C, W)`` (column ``W-1`` is the most recent), or None
            for a fresh sequence (zeros).
        activation: None or ``"silu"``/``"swish"``.
        output_final_state: also return the new cache: the last ``W`` inputs of ``cat(cache, x)``.

    Returns:
        ``(y, new_cache)``; ``y`` has the shape and dtype of ``x``; ``new_cache`` is None unless requested.
    """
    B, T, C = x.shape
    w = weight.reshape(C, -1)
    W = w.shape[-1]
    xt = x.transpose(1, 2)  # (B, C, T)
    prev = cache.to(x.dtype) if cache is not None else x.new_zeros(B, C, W)
    full = torch.cat([prev, xt], dim=-1)  # (B, C, W + T); output t reads inputs t-W+1 .. t
    y = F.conv1d(full[..., 1:], w.unsqueeze(1).to(x.dtype),
                 bias.to(x.dtype) if bias is not None else None, groups=C)  # (B, C, T)
    if activation in ("silu", "swish"):
        y = F.silu(y)
    elif activation is not None:
        raise ValueError(f"short_conv activation: {activation!r}; expected None, 'silu' or 'swish'")
    new_cache = full[..., -W:].contiguous() if output_final_state else None
    return y.transpose(1, 2), new_cache


def conv_module(conv: torch.nn.Module, x: torch.Tensor, cache: torch.Tensor | None,
                output_final_state: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run an fla ``ShortConvolution`` module's parameters through :func:`short_conv` (CPU path)."""
    return short_conv(x, conv.weight, conv.bias, cache, conv.activation, output_final_state)


# -- numerics shared by the CPU paths ------------------------------------------------------------------------------
def bounded_log_gate(g: torch.Tensor, lower_bound: torch.Tensor | None, layer_idx: int | None) -> torch.Tensor:
    """fla's forget-gate lower bound on a log gate ``g = logsigmoid(f)``: ``log(lb + (1 - lb) exp(g))`` through
    ``logaddexp`` as fla's HGRN layers compute it; unchanged without a bound and in layer 0 (whose bound is 0)."""
    if lower_bound is None or not layer_idx:
        return g
    return torch.logaddexp(lower_bound.log(), torch.log1p(-lower_bound) + g)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32 like fla's kernels, returned in ``x``'s dtype."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def rms_norm_gated(x: torch.Tensor, g: torch.Tensor, weight: torch.Tensor | None, eps: float,
                   activation: str = "swish") -> torch.Tensor:
    """fla's ``FusedRMSNormGated``: ``rmsnorm(x) * weight * act(g)`` (act swish/silu or sigmoid), fp32 inside."""
    y = rms_norm(x, weight, eps).float()
    gf = g.float()
    y = y * (gf * torch.sigmoid(gf) if activation in ("swish", "silu") else torch.sigmoid(gf))
    return y.to(x.dtype)


# -- the fla Cache bridge (CUDA path) ------------------------------------------------------------------------------
def to_fla_cache(layer_idx: int, state: State | None, conv_names: tuple[str, ...]) -> Any:
    """Wrap our layer state in an ``fla.models.utils.Cache`` holding it at ``layer_idx`` (None = empty cache).

    Conv caches are cloned: fla's single-token decode updates its conv cache in place, and our states are values.
    """
    from fla.models.utils import Cache

    cache = Cache()
    if state:
        conv = tuple(state[f"conv_{n}"].clone() for n in conv_names) if conv_names else None
        # offset = tokens seen: RetNet reads it back as the rotary offset via get_seq_length(layer_idx)
        cache.update(recurrent_state=state["recurrent"], conv_state=conv, layer_idx=layer_idx,
                     offset=int(state.get("pos", 0)))
    return cache


def from_fla_cache(cache: Any, layer_idx: int, conv_names: tuple[str, ...], with_pos: bool = False) -> State:
    """Our layer state from the fla Cache a layer forward filled in."""
    entry = cache[layer_idx]
    state: State = {"recurrent": entry["recurrent_state"]}
    if conv_names:
        state.update({f"conv_{n}": c for n, c in zip(conv_names, entry["conv_state"], strict=True)})
    if with_pos:
        state["pos"] = int(cache.get_seq_length(layer_idx))
    return state


class FlaMixer:
    """Mixin placed before the fla layer class: ``from_layout`` and the CUDA/CPU forward dispatch.

    ``@register_mixer(name)`` sets ``KIND`` (the ``hyla.space.mixer_kinds`` name); subclasses set ``CONV_ORDER``
    (suffixes of the conv caches in the order of fla's ``conv_state`` tuple; empty when short conv is off) and
    implement ``_cpu_forward``.
    """

    KIND: ClassVar[str] = ""
    CONV_ORDER: ClassVar[tuple[str, ...]] = ()
    TRACK_POS: ClassVar[bool] = False  # keep "pos" in the state (RetNet's rotary offset)

    @classmethod
    def from_layout(cls, layout: Layout, index: int) -> FlaMixer:
        """Build layer ``index`` of ``layout``; constructor refusals become a one-line ConfigError."""
        spec = layout.layers[index]
        if spec.mixer != cls.KIND:
            raise ConfigError(f"layers[{index}].mixer: {spec.mixer!r} cannot build a {cls.__name__}; "
                              f"expected {cls.KIND!r}")
        # fla_kwargs = resolved options under fla's constructor names (MixerKind.fla_names)
        opts = get_mixer_kind(cls.KIND).fla_kwargs(layout.d_model, spec.option_dict())
        if "norm_eps" not in opts and "norm_eps" in inspect.signature(cls).parameters:
            # the layout's eps inside the layer too, as fla's models pass their one config.norm_eps to both
            opts["norm_eps"] = layout.norm_eps
        try:
            return cls(hidden_size=layout.d_model, layer_idx=index, **opts)
        except (AssertionError, ValueError, RuntimeError) as e:
            raise ConfigError(f"layers[{index}].options: {cls.KIND} with {opts} at d_model {layout.d_model} "
                              f"is refused by fla: {e}") from None

    @property
    def conv_names(self) -> tuple[str, ...]:
        """Conv cache suffixes in use (none when short conv is off)."""
        return self.CONV_ORDER if getattr(self, "use_short_conv", False) else ()

    def forward(self, x: torch.Tensor, state: State | None = None, use_cache: bool = False,
                lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, State | None]:
        """Mix tokens ``x`` (B, T, D) -> (B, T, D), continuing ``state``; see the module docstring.

        ``lower_bound``: this layer's row of the model's forget-gate bounds (kinds with
        ``MixerKind.lower_bound_width``; fla's layers take it as ``lower_bound`` and ignore it in layer 0)."""
        if x.dim() != 3:
            raise ValueError(f"{type(self).__name__}: expected x of shape (B, T, D), got {tuple(x.shape)}")
        if state and state["recurrent"].shape[0] != x.shape[0]:
            # the recurrences would silently broadcast a batch-1 state over the batch: refuse instead
            raise ConfigError(f"{type(self).__name__} state: batch {state['recurrent'].shape[0]} does not match "
                              f"input batch {x.shape[0]}")
        extra = {} if lower_bound is None else {"lower_bound": lower_bound}  # only bounded kinds take it
        if use_fla(x):
            return self._fla_forward(x, state, use_cache, **extra)
        return self._cpu_forward(x, state, use_cache, **extra)

    def _fla_forward(self, x: torch.Tensor, state: State | None, use_cache: bool,
                     **extra: torch.Tensor) -> tuple[torch.Tensor, State | None]:
        """fla's own forward (the next class in the MRO) with our state passed through an fla Cache."""
        cache = to_fla_cache(self.layer_idx, state, self.conv_names) if (state or use_cache) else None
        y, _, cache = super().forward(hidden_states=x, past_key_values=cache, use_cache=use_cache,  # type: ignore[misc]
                                      **extra)
        if not use_cache:
            return y, None
        return y, from_fla_cache(cache, self.layer_idx, self.conv_names, with_pos=self.TRACK_POS)

    def _cpu_forward(self, x: torch.Tensor, state: State | None,
                     use_cache: bool) -> tuple[torch.Tensor, State | None]:
        raise NotImplementedError

    def _convs(self, pairs: list[tuple[str, torch.nn.Module, torch.Tensor]], state: State | None,
               use_cache: bool) -> tuple[list[torch.Tensor], State]:
        """CPU: run projections through their short convs (when on), collecting the new conv caches."""
        outs: list[torch.Tensor] = []
        new: State = {}
        for name, conv, proj in pairs:
            if not self.conv_names:
                outs.append(proj)
                continue
            y, c = conv_module(conv, proj, state[f"conv_{name}"] if state else None, use_cache)
            outs.append(y)
            if use_cache:
                new[f"conv_{name}"] = c
        return outs, new

    def _qkv_convs(self, x: torch.Tensor, state: State | None,
                   use_cache: bool) -> tuple[list[torch.Tensor], State]:
        """CPU: q/k/v projections of ``x`` through ``q_conv1d``/``k_conv1d``/``v_conv1d`` (delta-rule layers)."""
        return self._convs([(n, getattr(self, f"{n}_conv1d", None), getattr(self, f"{n}_proj")(x)) for n in "qkv"],
                           state, use_cache)
