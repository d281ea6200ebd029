"""The hybrid language model: one generic pre-norm block for every token mixer, stacked into `HylaLM`.

Structure (must match ``hyla.space.cost.param_count`` exactly, see ``hyla/ARCHITECTURE.md``)::

    tokens -> Embedding(vocab, d)
           -> n_layers x HybridBlock:  x = x + mixer(RMSNorm(x));  x = x + SwiGLU(RMSNorm(x))
           -> RMSNorm(d) -> Linear(d, vocab)  (untied head, no bias)

The mixer of layer ``i`` comes from ``hyla.proxy_train.model.mixers.build_mixer(layout, i)``: whole softmax attention,
a linear mixer (an fla layer subclass) or a head-wise hybrid. Each mixer carries its own inference state (a dict
of tensors); the LM passes a list of them, one per layer, in and out of ``forward``.

Initialisation follows fla/flame's models: every ``nn.Linear``/``nn.Embedding`` weight ~ N(0, 0.02), Linear biases
zero, and the residual output projections (``o_proj``/``out_proj``/``down_proj``) scaled by 1/sqrt(2·n_layers)
(GPT-2 style) so the residual stream does not grow with depth. Parameters that fla initialises specially inside
its layers (``A_log``, ``dt_bias``, ``D``, conv kernels, norm weights) are left as fla made them.

Forget-gate lower bounds (fla's HGRN/HGRN-2 models, ``use_lower_bound``): when the layout has bounded layers
(`Layout.bounded_layers`), the LM holds fla's model-level table ``lower_bounds`` ``(n_layers, width)``,
zero-initialised; each forward turns it into ``softmax(P, 0).cumsum(0) - softmax(P, 0)[0]`` (rising with depth,
layer i of L starting at i/L) and hands row i to bounded layer i, whose gate becomes ``lb + (1 - lb) sigmoid(f)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.parts import RMSNorm, SwiGLU
from hyla.proxy_train.model.recompute import recompute_mode
from hyla.space.layout import Layout

#: A per-layer inference state: the mixer's dict of tensors (plus e.g. an int position), or None before prefill.
LayerState = dict[str, Any] | None

#: Names of the last projection of a residual branch (scaled down at init).
RESIDUAL_PROJ = ("o_proj", "out_proj", "down_proj")


@torch.no_grad()
def init_weights(module: nn.Module, std: float, n_layers: int) -> None:
    """The LM's init of every ``nn.Linear``/``nn.Embedding`` inside ``module`` (module docstring): N(0, std) weights,
    zero biases, residual output projections scaled by 1/sqrt(2 n_layers); other parameters untouched."""
    residual_scale = 1.0 / math.sqrt(2 * n_layers)
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, mean=0.0, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
            if name.rsplit(".", 1)[-1] in RESIDUAL_PROJ:
                sub.weight.mul_(residual_scale)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, mean=0.0, std=std)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of ``module``'s trainable parameters: decay matrices (and embeddings), never norms, biases,
    1-D gates or ``_no_weight_decay`` parameters (fla's A_log, dt_bias, D; the lower-bound logits)."""
    decay, no_decay = [], []
    for p in module.parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2 or getattr(p, "_no_weight_decay", False):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def bound_rows(table: torch.Tensor) -> torch.Tensor:
    """Every layer's forget-gate lower bound from fla's table of logits ``(n_layers, width)``: the softmax over
    layers, accumulated and shifted so that layer 0's row is 0 (fp32)."""
    p = table.softmax(0, dtype=torch.float)
    return p.cumsum(0) - p[0]


class HybridBlock(nn.Module):
    """One pre-norm residual block around any token mixer: ``x + mixer(norm(x))`` then ``x + mlp(norm(x))``.

    Two halves: `mix` (``mixer(mixer_norm(x))``) and `ffn` (the residual add, ``mlp_norm`` and the MLP), so
    that either can be recomputed in the backward pass on its own (`HylaLM`'s ``gradient_checkpointing``) and
    `ffn` compiled (`HylaLM.compile_blocks`).

    Args:
        layout: the model layout.
        index: which layer of ``layout`` this block is (selects the mixer).
    """

    def __init__(self, layout: Layout, index: int) -> None:
        super().__init__()
        d = layout.d_model
        self.index = index
        self.mixer_norm = RMSNorm(d, eps=layout.norm_eps)
        self.mixer = build_mixer(layout, index)
        self.mlp_norm = RMSNorm(d, eps=layout.norm_eps)
        self.mlp = SwiGLU(d, layout.mlp_hidden)
        #: the mixer takes row ``index`` of the LM's lower-bound table (HGRN/HGRN-2; never layer 0, as fla)
        self.bounded = index > 0 and index in layout.bounded_layers()
        #: `ffn` and `mix`, or their torch.compile'd forms (`HylaLM.compile_blocks`; plain attributes)
        self.ffn_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.ffn
        self.mix_fn: Callable[..., tuple[torch.Tensor, LayerState]] = self.mix

    def forward(self, x: torch.Tensor, state: LayerState = None, use_cache: bool = False,
                lower_bound: torch.Tensor | None = None, recompute: str | None = None
                ) -> tuple[torch.Tensor, LayerState]:
        """(B, T, D) -> (B, T, D) and the mixer's new state (None unless ``use_cache``); ``lower_bound`` is this
        layer's forget-gate bound (bounded layers only); ``recompute`` ``"mixer"`` or ``"mlp"`` recomputes that
        half in the backward pass instead of keeping its activations (training only)."""
        if recompute == "mixer":
            y, new_state = checkpoint(self.mix_fn, x, None, False, lower_bound, use_reentrant=False)
        elif state is None and not use_cache:  # training and scoring: the compiled form when there is one
            y, new_state = self.mix_fn(x, None, False, lower_bound)
        else:
            y, new_state = self.mix(x, state, use_cache, lower_bound)
        if recompute == "mlp":
            x = checkpoint(self.ffn_fn, x, y, use_reentrant=False)
        else:
            x = self.ffn_fn(x, y)
        return x, (new_state if use_cache else None)

    def mix(self, x: torch.Tensor, state: LayerState = None, use_cache: bool = False,
            lower_bound: torch.Tensor | None = None) -> tuple[torch.Tensor, LayerState]:
        """The mixer half: ``mixer(mixer_norm(x))`` -> (y, new state)."""
        extra = {"lower_bound": lower_bound} if lower_bound is not None else {}
        return self.mixer(self.mixer_norm(x), state=state, use_cache=use_cache, **extra)

    def ffn(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The MLP half: ``r = x + y; r + mlp(mlp_norm(r))`` (fla's fused norm adds ``y`` in its kernel)."""
        h, x = self.mlp_norm(y, residual=x)
        return x + self.mlp(h)


class HylaLM(nn.Module):
    """A hybrid causal LM built from a `Layout`.

    Args:
        layout: the layout (mixers per layer, widths, vocab).
        gradient_checkpointing: recompute activations in the backward pass instead of keeping them (training
            only, ignored when ``use_cache`` is set): True or ``"block"`` whole blocks (least memory); ``"mixer"``
            or ``"mlp"`` only that half of every block (selective: less recomputation, less memory saved).
        fuse_norm: the block and final norms run fla's fused RMSNorm kernel on CUDA, the MLP's norm with the
            residual add in it (`parts.RMSNorm`); same parameters and arithmetic.
        fuse_swiglu: the MLPs run fla's fused SwiGLU + down projection on CUDA (`parts.SwiGLU`); same parameters.
    """

    def __init__(self, layout: Layout, gradient_checkpointing: bool | str = False, *, fuse_norm: bool = False,
                 fuse_swiglu: bool = False) -> None:
        super().__init__()
        recompute_mode(gradient_checkpointing)  # a bad value fails here
        self.layout = layout
        self.gradient_checkpointing = gradient_checkpointing
        d = layout.d_model
        self.embeddings = nn.Embedding(layout.vocab_size, d)
        self.blocks = nn.ModuleList(HybridBlock(layout, i) for i in range(layout.n_layers))
        self.norm = RMSNorm(d, eps=layout.norm_eps)
        self.lm_head = nn.Linear(d, layout.vocab_size, bias=False)
        shape = layout.lower_bound_shape()
        self.lower_bounds = nn.Parameter(torch.zeros(shape)) if shape else None
        if self.lower_bounds is not None:
            self.lower_bounds._no_weight_decay = True  # logits of a softmax over layers, not a weight matrix
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.fused = fuse_norm
            elif isinstance(module, SwiGLU):
                module.fused = fuse_swiglu
        self.reset_parameters()

    def compile_blocks(self, **options: Any) -> None:
        """torch.compile the parts of every block that are plain torch (regional compilation: parameters, names
        and state dict unchanged): each block's `HybridBlock.ffn` (residual add, norm, SwiGLU) and, for softmax
        attention layers, the whole mixer half (norm, projections, RoPE, SDPA). fla's Triton mixers stay eager.
        The blocks share the compiled code (one graph per distinct half, not one per layer); training shapes
        are static, so ``dynamic=False`` unless ``options`` say otherwise."""
        options = {"dynamic": False, **options}
        for block in self.blocks:
            block.ffn_fn = torch.compile(block.ffn, **options)
            if getattr(block.mixer, "KIND", None) == "attn":
                block.mix_fn = torch.compile(block.mix, **options)

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """Re-initialise Linear/Embedding weights (see module docstring); fla's special parameters are untouched."""
        init_weights(self, std, self.layout.n_layers)
        if self.lower_bounds is not None:
            self.lower_bounds.zero_()  # fla's init: layer i of L starts at the bound i/L

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; ``non_embedding`` leaves out the embedding and the LM head (untied)."""
        total = sum(p.numel() for p in self.parameters())
        if non_embedding:
            total -= self.embeddings.weight.numel() + self.lm_head.weight.numel()
        return total

    def forward(self, input_ids: torch.Tensor, states: list[LayerState] | None = None,
                use_cache: bool = False) -> tuple[torch.Tensor, list[LayerState] | None]:
        """Logits for every position.

        Args:
            input_ids: (B, T) token ids.
            states: one state per layer from a previous call with ``use_cache=True`` (None = start fresh).
            use_cache: return the updated per-layer states for incremental decoding.

        Returns:
            ``(logits (B, T, vocab), states)``; ``states`` is None unless ``use_cache``.
        """
        x, new_states = self.hidden(input_ids, states, use_cache)
        return self.logits(x), new_states

    def hidden(self, input_ids: torch.Tensor, states: list[LayerState] | None = None,
               use_cache: bool = False) -> tuple[torch.Tensor, list[LayerState] | None]:
        """``forward`` up to the last block: ``(B, T, D)`` before the final norm and head (for losses that fuse
        the head, e.g. fla's ``FusedLinearCrossEntropyLoss`` on ``norm(x)`` and ``lm_head.weight``), and states."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        if states is not None and len(states) != len(self.blocks):
            raise ValueError(f"states has {len(states)} entries; the model has {len(self.blocks)} layers")
        x = self.embed(input_ids)
        bounds = self.bound_rows()
        recompute = None
        if self.training and not use_cache and torch.is_grad_enabled():
            recompute = recompute_mode(self.gradient_checkpointing)
        new_states: list[LayerState] = []
        for i, block in enumerate(self.blocks):
            state = states[i] if states is not None else None
            lb = bounds[i] if block.bounded else None
            if recompute == "block":
                x, s = checkpoint(block, x, None, False, lb, use_reentrant=False)
            else:
                x, s = block(x, state, use_cache, lb, recompute)
            new_states.append(s)
        return x, (new_states if use_cache else None)

    def bound_rows(self) -> torch.Tensor | None:
        """Every layer's forget-gate lower bound, ``(n_layers, width)`` fp32 (fla's HGRN models): the softmax of
        ``lower_bounds`` over layers, accumulated and shifted so that layer 0's row is 0; None without bounds."""
        return None if self.lower_bounds is None else bound_rows(self.lower_bounds)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, D): the input of the first block (forward hooks on ``embeddings`` apply)."""
        return self.embeddings(input_ids)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) output of the last block -> (B, T, vocab)."""
        return self.lm_head(self.norm(x))

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay matrices (and the embedding), never norms, biases, 1-D gates or ``_no_weight_decay``
        parameters (fla's A_log, dt_bias, D; the lower-bound logits)."""
        return param_groups(self, weight_decay)


@torch.no_grad()
def greedy_decode(model: HylaLM, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation with the per-layer states as cache (prefill once, then one token per step).

    Args:
        model: the LM (put it in eval mode first).
        prompt: (B, T) token ids.
        max_new_tokens: how many tokens to append.

    Returns:
        (B, T + max_new_tokens) ids.
    """
    logits, states = model(prompt, use_cache=True)
    out = [prompt]
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits, states = model(nxt, states=states, use_cache=True)
    return torch.cat(out, dim=1)
