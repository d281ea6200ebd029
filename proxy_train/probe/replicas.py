"""Several copies of one small model trained as one: parameters stacked on a leading replica axis, one
vectorised (``torch.func.vmap``) forward and backward, and AdamW with a learning rate per replica.

Why: a recall probe is a 24-layer model of width ~128 on short sequences, so its step is thousands of tiny
kernels and the GPU waits on launches, not on arithmetic. Stacking R probes of one layout (its seeds and
learning rates) turns every kernel into one kernel over R times the data, so R probes cost about what one costs.
Each replica stays an independent model: its own initialisation (its seed), its own batches, its own gradient
clipping and its own learning rate; nothing but the kernels is shared.

With ``compile_blocks`` the stacked forward runs block by block, each block's vmapped forward through
``torch.compile`` (regional compilation): blocks of one layer spec share one compiled function (a layout has a
handful of distinct specs, a 24-layer model compiles 1-3 blocks), and Inductor fuses the scans' elementwise work,
casts and copies (``benchmarks/bench_stack_step.py --profile`` shows where a step's time goes).

The optimizer is written here (about twenty lines of ``torch._foreach_*``) because ``torch.optim.AdamW`` takes
one learning rate per parameter group, not one per slice of a tensor. It follows ``torch.optim.AdamW``
(decoupled weight decay, bias correction) and keeps every quantity on the device, so a step can be captured in
a CUDA graph. A replica whose learning rate is 0 (stopped or diverged) no longer moves.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hyla.proxy_train.model.lm import HylaLM
from hyla.space.layout import Layout
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel


class ReplicaStack:
    """R replicas of ``layout``, replica r initialised from ``seeds[r]`` exactly as a lone model would be.

    Args:
        layout: the model each replica is (built with ``HylaLM``).
        seeds: one seed per replica (``torch.manual_seed`` before building it; equal seeds give equal models).
        init_std: Linear/Embedding initialisation std (``HylaLM.reset_parameters``).
        weight_decay: AdamW decay of matrices (never norms, biases, gates or fla's no-decay parameters).
        dev: device.
        extra: ``(name, build)`` pairs: ``build(model)`` adds a probe-only module to each freshly built replica
            (e.g. the recall probe's previous-token embedding); its parameters are stacked and trained too.
        vectorise: stack through ``vmap``; False requires R = 1 (for fla's Triton kernels, which have no
            batching rule).
        compile_blocks: training forwards run each block's vmapped forward through ``torch.compile``, one
            compiled function per distinct layer spec (module docstring); evaluation (no grad) stays eager.
    """

    def __init__(self, layout: Layout, seeds: Sequence[int], init_std: float, weight_decay: float,
                 dev: torch.device, extra: Sequence[Any] = (), vectorise: bool = True,
                 compile_blocks: bool = False) -> None:
        if not vectorise and len(seeds) != 1:
            raise ValueError(f"ReplicaStack: {len(seeds)} replicas need vectorise=True")
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = HylaLM(layout)
            model.reset_parameters(std=init_std)
            for build in extra:
                build(model)
            models.append(model.to(dev))
        self.n, self.dev, self.vectorise = len(seeds), dev, vectorise
        names = [n for n, p in models[0].named_parameters() if p.requires_grad]
        params, buffers = stack_module_state(models)
        self.params: dict[str, torch.Tensor] = {n: params[n] for n in names}
        self.buffers: dict[str, torch.Tensor] = buffers
        self.model: nn.Module = copy.deepcopy(models[0]).to("meta")  # the structure; weights come from params
        lone = dict(models[0].named_parameters())
        self.decay = [lone[n].dim() >= 2 and not getattr(lone[n], "_no_weight_decay", False) for n in self.params]
        self.weight_decay = weight_decay
        self.exp_avg = [torch.zeros_like(p) for p in self.params.values()]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params.values()]
        self.step_count = torch.zeros((), device=dev)
        # one (R, 1, ..., 1) view per parameter shape rank, to broadcast per-replica scalars
        self._ranks = [p.dim() for p in self.params.values()]
        self._forward = _vmapped(self.model)
        self._blocks = _CompiledBlocks(self.model, self.params, self.buffers) if compile_blocks and vectorise else None

    def parameters(self) -> list[torch.Tensor]:
        """The stacked parameters, ``(R, *shape)`` each."""
        return list(self.params.values())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, B, T)`` token ids -> ``(R, B, T, vocab)`` logits, replica r on ``x[r]``."""
        if not self.vectorise:
            lone = ({n: p[0] for n, p in self.params.items()}, {n: b[0] for n, b in self.buffers.items()})
            return functional_call(self.model, lone, (x[0],))[0].unsqueeze(0)
        # Under vmap: CPU flash attention has no batching rule (it would loop over replicas), and CUDA's
        # memory-efficient kernel (fp32) fails its backward's alignment check; flash (bf16) or math work.
        backends = [SDPBackend.MATH] if self.dev.type == "cpu" else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
        with sdpa_kernel(backends):
            if self._blocks is not None and torch.is_grad_enabled():
                return self._blocks(x)
            return self._forward(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def _per_replica(self, values: torch.Tensor) -> list[torch.Tensor]:
        """``(R,)`` -> one view per parameter that broadcasts over it."""
        return [values.view(self.n, *([1] * (rank - 1))) for rank in self._ranks]

    @torch.no_grad()
    def clip_and_step(self, lr: torch.Tensor, *, max_norm: float, betas: tuple[float, float],
                      eps: float = 1e-8) -> None:
        """Clip each replica's gradient to ``max_norm`` (its own global norm), then one AdamW step with
        learning rate ``lr[r]`` for replica r (``lr``: ``(R,)`` on the device) and ``betas``; ``eps`` as
        ``torch.optim.AdamW``'s default. Gradients are left in place."""
        params = self.parameters()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        norms = torch.cat([g.reshape(self.n, -1).float() for g in grads], 1).norm(dim=1)
        torch._foreach_mul_(grads, self._per_replica((max_norm / (norms + 1e-6)).clamp(max=1.0).to(grads[0].dtype)))
        b1, b2 = betas
        self.step_count.add_(1)
        torch._foreach_lerp_(self.exp_avg, grads, 1 - b1)
        torch._foreach_mul_(self.exp_avg_sq, b2)
        torch._foreach_addcmul_(self.exp_avg_sq, grads, grads, 1 - b2)
        bias1 = 1 - b1 ** self.step_count
        bias2_sqrt = (1 - b2 ** self.step_count).sqrt()
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(self.exp_avg, denom)
        torch._foreach_mul_(update, self._per_replica(lr / bias1))
        if self.weight_decay:
            decayed = [p for p, d in zip(params, self.decay) if d]
            keep = 1 - lr * self.weight_decay
            torch._foreach_mul_(decayed, [k for k, d in zip(self._per_replica(keep), self.decay) if d])
        torch._foreach_sub_(params, update)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None


class _Call(nn.Module):
    """``lm.<method>(*args)`` as a module's forward, so that `functional_call` can run one part of ``lm``."""

    def __init__(self, lm: nn.Module, method: str) -> None:
        super().__init__()
        self.lm, self.method = lm, method

    def forward(self, *args: Any) -> Any:
        return getattr(self.lm, self.method)(*args)


class _CompiledBlocks:
    """The stacked forward block by block: vmapped ``embed``, then every block through the compiled vmapped
    forward of its layer spec, then vmapped ``logits``. Parameters are read from the stack's tensors at each call
    (the optimizer updates them in place)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> None:
        self.embed, self.logits, self.bound_rows = (_vmapped(_Call(model, method))
                                                    for method in ("embed", "logits", "bound_rows"))
        self.bounded = model.lower_bounds is not None
        self.ends_state = ({f"lm.{n}": p for n, p in params.items() if not n.startswith("blocks.")},
                           {f"lm.{n}": b for n, b in buffers.items() if not n.startswith("blocks.")})
        self.blocks: list[tuple[Any, dict[str, torch.Tensor], dict[str, torch.Tensor], bool]] = []
        compiled: dict[Any, Any] = {}
        # every compiled block shares torch.func's vmap wrapper code object, whose compile cache holds
        # `recompile_limit` entries (8): room for every spec and stack size of a long run
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        for i, block in enumerate(model.blocks):
            # bounded and unbounded blocks of one spec differ (layer 0 takes no bound): one function each
            key = (model.layout.layers[block.index], block.bounded)
            if key not in compiled:
                compiled[key] = torch.compile(_vmapped(block, block.bounded), dynamic=False)
            prefix = f"blocks.{i}."
            self.blocks.append((compiled[key], {n[len(prefix):]: p for n, p in params.items() if n.startswith(prefix)},
                                {n[len(prefix):]: b for n, b in buffers.items() if n.startswith(prefix)},
                                block.bounded))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(*self.ends_state, x)
        rows = self.bound_rows(*self.ends_state) if self.bounded else None  # (R, n_layers, width)
        for i, (fn, params, buffers, bounded) in enumerate(self.blocks):
            h = fn(params, buffers, h, rows[:, i]) if bounded else fn(params, buffers, h)
        return self.logits(*self.ends_state, h)


def _vmapped(module: nn.Module, bounded: bool = False) -> Any:
    """``(params, buffers, *args) -> out`` over a leading replica axis: ``module`` (a structure) with replica r's
    tensors on ``args[..][r]``; of an output tuple (a block's or the LM's ``(out, states)``) only ``out``.
    ``bounded``: the last argument is the block's ``lower_bound``."""
    def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], *args: Any) -> torch.Tensor:
        kwargs = {"lower_bound": args[-1]} if bounded else {}
        out = functional_call(module, (params, buffers), args[:-1] if bounded else args, kwargs)
        return out[0] if isinstance(out, tuple) else out

    return vmap(one)


def replica_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per replica over the targets that are not -100: ``(R, B, T, V)``, ``(R, B, T)`` ->
    ``(R,)``. Their sum's gradient is each replica's own loss gradient."""
    ce = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), ignore_index=-100, reduction="none")
    counted = (targets != -100).flatten(1).sum(1).clamp(min=1)
    return ce.view(targets.shape[0], -1).sum(1) / counted
