"""Exact cost accounting of a `Layout`: parameters, training FLOPs per token, inference KV/state memory.

Everything follows the model structure of ``hyla/ARCHITECTURE.md`` exactly (pure Python, no torch):

- LM: embedding ``vocab x d``, the blocks, a final RMSNorm ``d``, an untied head ``d x vocab``.
- Block: RMSNorm ``d`` -> token mixer -> residual; RMSNorm ``d`` -> SwiGLU (``3 * d * mlp_hidden``) -> residual.
- Whole attention layer: q ``d x (H hd)``, k, v ``d x (Hkv hd)``, o ``(H hd) x d``; no biases.
- Head-wise layer (linear kind + ``k`` softmax heads): the fla linear layer at full width + an attention branch
  (q, k, v ``d x (k hd)``, o ``(k hd) x d``) + two branch RMSNorms ``d``.
- Linear mixers: `hyla.space.mixer_kinds.MixerFormula` (closed forms checked against the fla layers in the tests).

Memory of one sequence at context ``L`` (model dtype of ``b`` bytes): KV ``2 * heads * hd * min(L, window) * b``
per softmax part; recurrent states fp32 (HGRN: model dtype); short-conv caches ``channels * W * b``.
"""

from __future__ import annotations

from dataclasses import dataclass

from hyla.config import ConfigError
from hyla.metrics import human_bytes  # noqa: F401  (re-exported: the one byte formatter lives in hyla.metrics)
from hyla.space.layout import Layout, LayerSpec
from hyla.space.mixer_kinds import MixerFormula, get_mixer_kind

#: bytes per element of the model dtypes hyla runs in
DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
#: chunk size assumed by the linear-mixer FLOP term (fla's chunk kernels use 64)
CHUNK_SIZE = 64


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (``float32``, ``bfloat16``, ``float16``; ``torch.`` prefix accepted)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ConfigError(f"dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[name]


@dataclass(frozen=True, slots=True)
class ParamCount:
    """Parameter counts of a layout.

    Attributes:
        total: every parameter (embedding + blocks + final norm + head).
        embedding: the input embedding ``vocab x d``.
        head: the untied LM head ``d x vocab``.
        non_embedding: ``total - embedding - head`` (blocks, the final norm and the lower-bound table).
        per_layer: each block's parameters (its two norms, token mixer and SwiGLU MLP).
        lower_bounds: the model-level forget-gate lower-bound table (HGRN/HGRN-2; `Layout.lower_bound_shape`).
    """

    total: int
    embedding: int
    head: int
    non_embedding: int
    per_layer: tuple[int, ...]
    lower_bounds: int = 0


@dataclass(frozen=True, slots=True)
class LayerMemory:
    """Inference memory of one layer for one sequence, in bytes."""

    kv_bytes: int
    recurrent_bytes: int
    conv_bytes: int

    @property
    def state_bytes(self) -> int:
        """Recurrent plus short-conv state."""
        return self.recurrent_bytes + self.conv_bytes

    @property
    def total_bytes(self) -> int:
        return self.kv_bytes + self.recurrent_bytes + self.conv_bytes


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Inference memory of one sequence at ``context`` tokens.

    Attributes:
        context: tokens held (prompt + generated).
        dtype: model dtype name.
        layers: per-layer memory.
        kv_bytes: softmax KV caches (whole attention and head-wise layers).
        state_bytes: recurrent + short-conv states of the linear mixers.
        total_bytes: ``kv_bytes + state_bytes``.
    """

    context: int
    dtype: str
    layers: tuple[LayerMemory, ...]
    kv_bytes: int
    state_bytes: int
    total_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"context": self.context, "dtype": self.dtype, "kv_bytes": self.kv_bytes,
                "state_bytes": self.state_bytes, "total_bytes": self.total_bytes,
                "layers": [{"kv_bytes": m.kv_bytes, "recurrent_bytes": m.recurrent_bytes,
                            "conv_bytes": m.conv_bytes} for m in self.layers]}


# -- per layer -------------------------------------------------------------------------------------------------
def _check_index(layout: Layout, index: int) -> LayerSpec:
    if not isinstance(index, int) or not 0 <= index < layout.n_layers:
        raise ConfigError(f"layer index: {index!r} out of range; expected [0, {layout.n_layers})")
    return layout.layers[index]


def _formula(layout: Layout, index: int) -> MixerFormula:
    spec = layout.layers[index]
    return get_mixer_kind(spec.mixer).formula(layout.d_model, spec.option_dict())


def _softmax_heads(layout: Layout, spec: LayerSpec) -> tuple[int, int]:
    """(query heads, kv heads) of the layer's softmax part; (0, 0) for a pure linear layer."""
    if spec.is_attention:
        return layout.num_heads, layout.kv_heads
    return spec.attn_heads, spec.attn_heads


def _softmax_params(layout: Layout, spec: LayerSpec) -> int:
    """Projection weights of the layer's softmax part (q, k, v, o)."""
    hq, hkv = _softmax_heads(layout, spec)
    return 2 * layout.d_model * hq * layout.head_dim + 2 * layout.d_model * hkv * layout.head_dim


def mixer_params(layout: Layout, index: int) -> int:
    """Parameters of layer ``index``'s token mixer alone (no block norms, no MLP).

    Whole attention: q/k/v/o. Linear: the fla layer. Head-wise: the fla layer + attention branch + its two
    branch RMSNorms (the whole head-wise module).
    """
    spec = _check_index(layout, index)
    if spec.is_attention:
        return _softmax_params(layout, spec)
    n = _formula(layout, index).params
    if spec.attn_heads:
        n += _softmax_params(layout, spec) + 2 * layout.d_model
    return n


def _block_params(layout: Layout, index: int) -> int:
    return mixer_params(layout, index) + 2 * layout.d_model + 3 * layout.d_model * layout.mlp_hidden


def param_count(layout: Layout) -> ParamCount:
    """Exact parameter count of ``HylaLM(layout)``."""
    per_layer = tuple(_block_params(layout, i) for i in range(layout.n_layers))
    emb = head = layout.vocab_size * layout.d_model
    shape = layout.lower_bound_shape()
    bounds = shape[0] * shape[1] if shape else 0
    non_emb = sum(per_layer) + layout.d_model + bounds  # + final RMSNorm + lower bounds
    return ParamCount(total=emb + head + non_emb, embedding=emb, head=head, non_embedding=non_emb,
                      per_layer=per_layer, lower_bounds=bounds)


def layer_memory(layout: Layout, index: int, context: int, dtype: str = "bfloat16") -> LayerMemory:
    """Inference memory of layer ``index`` for one sequence holding ``context`` tokens.

    Equals the sum of ``t.nbytes`` over the tensors of that layer's decode state (the mixers' contract).
    """
    spec = _check_index(layout, index)
    if not isinstance(context, int) or isinstance(context, bool) or context < 0:
        raise ConfigError(f"context: {context!r} must be a token count >= 0")
    b = dtype_bytes(dtype)
    _, hkv = _softmax_heads(layout, spec)
    cached = context if spec.window is None else min(context, spec.window)
    kv = 2 * hkv * layout.head_dim * cached * b
    if spec.is_attention:
        return LayerMemory(kv_bytes=kv, recurrent_bytes=0, conv_bytes=0)
    f = _formula(layout, index)
    return LayerMemory(kv_bytes=kv, recurrent_bytes=f.recurrent_bytes(b), conv_bytes=f.conv_bytes(b))


def inference_memory(layout: Layout, context: int, dtype: str = "bfloat16") -> MemoryReport:
    """KV-cache and recurrent/conv-state memory of one sequence at ``context`` tokens (weights excluded)."""
    layers = tuple(layer_memory(layout, i, context, dtype) for i in range(layout.n_layers))
    kv = sum(m.kv_bytes for m in layers)
    state = sum(m.state_bytes for m in layers)
    return MemoryReport(context=context, dtype=str(dtype).removeprefix("torch."), layers=layers, kv_bytes=kv,
                        state_bytes=state, total_bytes=kv + state)


# -- FLOPs -----------------------------------------------------------------------------------------------------
def effective_context(seq_len: int, window: int | None) -> float:
    """Mean number of keys a causal query attends to over positions 1..seq_len: ``mean_t min(t, window)``."""
    w = seq_len if window is None else min(window, seq_len)
    # positions t <= w see t keys, later ones see w keys
    return (w * (w + 1) / 2 + (seq_len - w) * w) / seq_len


def _linear_mixer_term(f: MixerFormula, chunk: int) -> float:
    """Forward FLOPs per token of the recurrence itself in chunked form (matmuls counted as 2 FLOPs per MAC).

    Per head: the state update ``k^T v`` and the inter-chunk readout ``q S`` (``2 * dk * dv`` each) plus the
    intra-chunk causal attention over ``chunk / 2`` keys on average (``chunk * (dk + dv)``). HGRN's elementwise
    scan has no intra-chunk matmuls, so its 1x1 heads cost ``4`` per channel.
    """
    per_head = 4 * f.head_k * f.head_v
    if not (f.head_k == 1 and f.head_v == 1):
        per_head += chunk * (f.head_k + f.head_v)
    return float(f.state_heads * per_head)


def flops_per_token(layout: Layout, seq_len: int, chunk: int = CHUNK_SIZE) -> float:
    """Training FLOPs (forward + backward) per token at sequence length ``seq_len``.

    ``6 * N_dense + 6 * N_head + 12 * sum_attn(heads * hd * C_eff) + 3 * sum_linear(recurrence term)``, where

    - ``N_dense``: block weights used in a multiply-accumulate per token (all projections, the SwiGLU, the
      linear mixers' dense weights incl. short-conv kernels); norms, biases and per-head scalars are elementwise
      and left out; the embedding lookup is free.
    - ``N_head``: the LM head ``d x vocab``.
    - softmax attention: per query head ``QK^T`` and ``AV`` cost ``2 * 2 * hd * C_eff`` forward, x3 for
      forward + backward = ``12 * hd * C_eff``, with ``C_eff = effective_context(seq_len, window)`` (causal
      average, window-limited). Whole attention layers count ``num_heads``, head-wise layers ``attn_heads``.
    - linear mixers: ``3 x`` the forward recurrence term of `_linear_mixer_term` (chunk size ``chunk``).
    """
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
        raise ConfigError(f"seq_len: {seq_len!r} must be a positive token count")
    d, hd = layout.d_model, layout.head_dim
    dense = 3 * d * layout.mlp_hidden * layout.n_layers
    attn = 0.0
    recur = 0.0
    for i, spec in enumerate(layout.layers):
        hq, _ = _softmax_heads(layout, spec)
        if hq:
            dense += _softmax_params(layout, spec)
            attn += 12 * hq * hd * effective_context(seq_len, spec.window)
        if not spec.is_attention:
            f = _formula(layout, i)
            dense += f.dense_params
            recur += 3 * _linear_mixer_term(f, chunk)
    return 6.0 * dense + 6.0 * layout.vocab_size * d + attn + recur


def human_count(n: float) -> str:
    """``340_000_000`` -> ``'340.0M'``."""
    for unit, div in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n:.0f}"
