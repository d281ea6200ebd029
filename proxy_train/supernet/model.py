"""The supernet: a trained all-attention model whose every layer also holds one linear branch per mixer kind.

Parts (``Supernet(teacher, choices)``):

- ``base``: a copy of the teacher (an all-attention `HylaLM`, with whatever its builder adds, e.g. the retrofit
  teacher's previous-token embedding): embeddings, norms, MLPs, head and each layer's softmax attention.
- ``branches[i][kind]``: the linear mixer of that kind at layer ``i``, built exactly as a layout's layer ``i`` is
  (`build_mixer`'s class, the space's fixed options), for every kind that `choices` allows at layer ``i``.
- ``hw_norms[i][kind_aK]``: the two branch norms of a head-wise layer with ``K`` softmax heads.
- ``bounds[wN]``: fla's forget-gate lower-bound table (``n_layers x N``) shared by the HGRN/HGRN-2 branches whose
  gate width is ``N``.

A layer spec is run by a path module (`path`) built from these parts, never holding weights of its own:

- ``attn`` (window w): the teacher's attention (a `SoftmaxAttention` with window w sharing its projections);
- a linear kind: its branch;
- head-wise ``kind+aK@w``: hyla's `HeadwiseHybrid` of the kind's branch and a K-head `SoftmaxAttention` whose
  projections are the first K query heads of the teacher's attention (`RowSlice`; key/value rows of the kv head
  each of them reads under GQA), with that layer's norms.

So the sub-network a layout picks is, weight for weight and op for op, the layout's own model: `extract` builds it
with the layout's builder and loads the chosen weights (a test checks the logits agree).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM, bound_rows
from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.mixers.attention import SoftmaxAttention
from hyla.proxy_train.model.mixers.headwise import HeadwiseHybrid
from hyla.proxy_train.supernet.choices import Choices, check_in_choices
from hyla.space.layout import LayerSpec, Layout

Builder = Callable[[Layout], HylaLM]


class RowSlice(nn.Module):
    """A bias-free Linear whose weight is some rows (or columns) of another Linear's weight, read at every call,
    so gradients reach the shared weight. The other Linear is not registered as a child: its owner keeps it."""

    def __init__(self, base: nn.Linear, rows: Sequence[int] | None = None, cols: Sequence[int] | None = None) -> None:
        super().__init__()
        if (rows is None) == (cols is None):
            raise ValueError("RowSlice: give rows or cols")
        object.__setattr__(self, "_base", base)
        self._dim = 0 if rows is not None else 1
        self._index = list(rows if rows is not None else cols)
        self._prefix = self._index == list(range(len(self._index)))
        self._on: dict[torch.device, torch.Tensor] = {}

    @property
    def weight(self) -> torch.Tensor:
        w = self._base.weight
        if self._prefix:
            return w[: len(self._index)] if self._dim == 0 else w[:, : len(self._index)]
        if w.device not in self._on:
            self._on[w.device] = torch.tensor(self._index, device=w.device)
        return w.index_select(self._dim, self._on[w.device])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class _BranchNorms(nn.Module):
    """The two RMSNorms of one head-wise choice (initialised as `HeadwiseHybrid` does)."""

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        ref = HeadwiseHybrid(nn.Identity(), nn.Identity(), d_model, eps)  # type: ignore[arg-type]
        self.norm_lin, self.norm_attn = ref.norm_lin, ref.norm_attn


def branch_name(spec: LayerSpec) -> str:
    """Key of a linear spec's branch: its kind, plus its options when it has any."""
    if not spec.options:
        return spec.mixer
    return spec.mixer + "-" + "-".join(f"{k}={v}" for k, v in spec.options).replace(".", "p")


def _norm_name(spec: LayerSpec) -> str:
    return f"{branch_name(spec)}_a{spec.attn_heads}"


class Supernet(nn.Module):
    """Teacher attention plus per-kind linear branches at every layer (module docstring).

    Args:
        teacher: an all-attention `HylaLM` (full causal attention in every layer); copied, never changed.
        choices: per layer, the specs to hold a path for (`choices.layer_choices`).
        build: makes a layout's model the way the teacher was made (default `HylaLM`); used by `extract`.
    """

    def __init__(self, teacher: HylaLM, choices: Choices, build: Builder = HylaLM) -> None:
        super().__init__()
        shape = teacher.layout
        if any(not s.is_attention or s.window is not None for s in shape.layers):
            raise ConfigError(f"supernet teacher: every layer must be full softmax attention, got "
                              f"{shape.layer_string()} ({[s.to_obj() for s in shape.layers]})")
        if len(choices) != shape.n_layers:
            raise ConfigError(f"supernet choices: {len(choices)} layers; the teacher has {shape.n_layers}")
        self.shape, self.choices, self.build = shape, choices, build
        self.base = copy.deepcopy(teacher)
        self.branches = nn.ModuleDict()
        self.hw_norms = nn.ModuleDict()
        self.bounds = nn.ParameterDict()
        self._bounded: dict[tuple[int, str], str] = {}  # (layer, branch) -> bounds key
        #: branch name -> its linear spec (kind and options, no softmax heads or window)
        self.branch_specs: dict[str, LayerSpec] = {}
        for i, options in enumerate(choices):
            for spec in options:
                if not spec.is_attention:
                    self._add_branch(i, spec)
        self._paths: dict[tuple[int, LayerSpec], nn.Module] = {}

    def _add_branch(self, i: int, spec: LayerSpec) -> None:
        name = branch_name(spec)
        layer = self.branches[str(i)] if str(i) in self.branches else nn.ModuleDict()
        self.branches[str(i)] = layer
        if name not in layer:
            self.branch_specs[name] = LayerSpec(mixer=spec.mixer, options=spec.options)
            pure = self.shape.with_layers([self.branch_specs[name]] * self.shape.n_layers)
            layer[name] = build_mixer(pure, i)
            width = pure.lower_bound_shape()
            if width is not None and i > 0:  # as HybridBlock: layer 0 never takes a bound
                key = f"w{width[1]}"
                if key not in self.bounds:
                    self.bounds[key] = nn.Parameter(torch.zeros(width))
                    self.bounds[key]._no_weight_decay = True
                self._bounded[(i, name)] = key
        if spec.attn_heads:
            norms = self.hw_norms[str(i)] if str(i) in self.hw_norms else nn.ModuleDict()
            self.hw_norms[str(i)] = norms
            if _norm_name(spec) not in norms:
                norms[_norm_name(spec)] = _BranchNorms(self.shape.d_model, self.shape.norm_eps)

    # -- paths -------------------------------------------------------------------------------------------------
    def teacher_attention(self, i: int) -> SoftmaxAttention:
        """Layer ``i``'s softmax attention (the teacher's, as trained in the supernet)."""
        return self.base.blocks[i].mixer

    def branch(self, i: int, spec: LayerSpec) -> nn.Module:
        """The linear branch of a (linear or head-wise) spec at layer ``i``."""
        return self.branches[str(i)][branch_name(spec)]

    def path(self, i: int, spec: LayerSpec) -> nn.Module:
        """The module that runs ``spec`` at layer ``i`` (module docstring); built once, sharing the weights."""
        key = (i, spec)
        if key not in self._paths:
            if spec not in self.choices[i]:
                raise ConfigError(f"supernet: layers[{i}] {spec.to_obj()!r} is not among its choices")
            self._paths[key] = self._make_path(i, spec)
        return self._paths[key]

    def _make_path(self, i: int, spec: LayerSpec) -> nn.Module:
        t, s = self.teacher_attention(i), self.shape
        if spec.is_attention:
            if spec.window is None:
                return t
            view = SoftmaxAttention(s.d_model, s.num_heads, s.kv_heads, s.head_dim, spec.window, s.rope_theta, i)
            view.q_proj, view.k_proj, view.v_proj, view.o_proj = t.q_proj, t.k_proj, t.v_proj, t.o_proj
            return view
        if not spec.attn_heads:
            return self.branch(i, spec)
        k, hd, group = spec.attn_heads, s.head_dim, s.num_heads // s.kv_heads
        view = SoftmaxAttention(s.d_model, k, k, hd, spec.window, s.rope_theta, i)
        q_rows = range(k * hd)
        kv_rows = [(j // group) * hd + o for j in range(k) for o in range(hd)]  # query head j reads kv head j//g
        view.q_proj, view.o_proj = RowSlice(t.q_proj, rows=q_rows), RowSlice(t.o_proj, cols=q_rows)
        view.k_proj, view.v_proj = RowSlice(t.k_proj, rows=kv_rows), RowSlice(t.v_proj, rows=kv_rows)
        hybrid = HeadwiseHybrid(self.branch(i, spec), view, s.d_model, s.norm_eps, layer_idx=i)
        norms = self.hw_norms[str(i)][_norm_name(spec)]
        hybrid.norm_lin, hybrid.norm_attn = norms.norm_lin, norms.norm_attn
        return hybrid

    def bound_key(self, i: int, spec: LayerSpec) -> str | None:
        """The `bounds` table layer ``i``'s spec reads its forget-gate lower bound from (None: unbounded)."""
        return None if spec.is_attention else self._bounded.get((i, branch_name(spec)))

    def bound_tables(self) -> dict[str, torch.Tensor]:
        """Every bounds table as per-layer rows (`HylaLM.bound_rows`' arithmetic)."""
        return {key: bound_rows(table) for key, table in self.bounds.items()}

    def run_layer(self, i: int, spec: LayerSpec, x: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """One `HybridBlock` of layer ``i`` with ``spec``'s path: ``x`` (B, T, D) -> (B, T, D)."""
        block = self.base.blocks[i]
        return x + self.mix(i, spec, block.mixer_norm(x), rows)

    def mix(self, i: int, spec: LayerSpec, normed: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """The mixer output of ``spec`` at layer ``i`` on the block's normed input."""
        key = self.bound_key(i, spec)
        extra = {"lower_bound": rows[key][i]} if key is not None else {}
        return self.path(i, spec)(normed, **extra)[0]

    def mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The rest of layer ``i``'s block after the mixer's residual: ``x + mlp(norm(x))``."""
        block = self.base.blocks[i]
        return x + block.mlp(block.mlp_norm(x))

    def forward(self, input_ids: torch.Tensor, layers: Sequence[LayerSpec]) -> torch.Tensor:
        """Logits (B, T, vocab) of one layout's path (see `hyla.proxy_train.supernet.route` for many at once)."""
        check_in_choices(layers, self.choices)
        x, rows = self.base.embed(input_ids), self.bound_tables()
        for i, spec in enumerate(layers):
            x = self.mlp(i, self.run_layer(i, spec, x, rows))
        return self.base.logits(x)

    # -- the chosen sub-network ------------------------------------------------------------------------------
    def layout_of(self, layers: Sequence[LayerSpec | str], name: str = "") -> Layout:
        """The `Layout` of the teacher's shape with these layers."""
        return self.shape.with_layers(layers, name=name)

    @torch.no_grad()
    def mixer_state(self, i: int, spec: LayerSpec) -> dict[str, torch.Tensor]:
        """The state dict that layer ``i``'s mixer has in the stand-alone model of a layout choosing ``spec``."""
        path = self.path(i, spec)
        if not isinstance(path, HeadwiseHybrid):
            return dict(path.state_dict())
        out = {f"linear.{k}": v for k, v in path.linear.state_dict().items()}
        out.update({f"attn.{n}.weight": getattr(path.attn, n).weight for n in ("q_proj", "k_proj", "v_proj", "o_proj")})
        out.update({"norm_lin.weight": path.norm_lin.weight, "norm_attn.weight": path.norm_attn.weight})
        return out

    @torch.no_grad()
    def extract(self, layout: Layout) -> HylaLM:
        """The stand-alone model of ``layout`` (the teacher's shape) with the weights the supernet holds for it."""
        check_in_choices(layout.layers, self.choices, f"layout {layout.name or layout.key()}")
        model = self.build(layout)
        base = self.base.state_dict()
        want = model.state_dict()
        state: dict[str, torch.Tensor] = {}
        for i, spec in enumerate(layout.layers):
            state.update({f"blocks.{i}.mixer.{k}": v for k, v in self.mixer_state(i, spec).items()})
        if "lower_bounds" in want:  # read by layers 1.. only; a table that no layer reads stays zero
            key = f"w{want['lower_bounds'].shape[1]}"
            state["lower_bounds"] = self.bounds[key] if key in self.bounds else torch.zeros_like(want["lower_bounds"])
        for key in want:
            if key not in state:
                state[key] = base[key]
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
        return model.to(next(self.base.parameters()).device)
