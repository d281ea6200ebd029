"""The probe model: the layout's pattern at the probe width (`probe_layout`), the same previous-token help for
every layout (`PrevTokenEmbedding`) and zero-initialised residual outputs (`zero_residual_outputs`); `replicas`
builds R of them as one stacked model (`build_replicas`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import RESIDUAL_PROJ
from hyla.proxy_train.model.mixers.registry import STACKABLE
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.probe.replicas import ReplicaStack
from hyla.proxy_train.train.config import width_scaled_std
from hyla.space.layout import ATTN, Layout
from hyla.space.presets import Scale, at_scale


class PrevTokenEmbedding(nn.Module):
    """Adds ``E_prev[x_{t-1}]`` to the token embedding output (a forward hook on ``model.embeddings``)."""

    def __init__(self, vocab_size: int, d_model: int, std: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * std)

    def hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        ids = inputs[0]
        prev = F.pad(ids[:, :-1], (1, 0), value=0)  # position 0 sees token 0 ("nothing before")
        return output + F.embedding(prev, self.weight).to(output.dtype)

    @classmethod
    def attach(cls, model: nn.Module, std: float) -> None:
        """Give ``model`` (a `HylaLM`) the help: a submodule ``prev_token_embedding`` hooked onto its embedding."""
        prev = cls(model.layout.vocab_size, model.layout.d_model, std)
        model.add_module("prev_token_embedding", prev)
        model.embeddings.register_forward_hook(prev.hook)


@torch.no_grad()
def zero_residual_outputs(model: nn.Module, which: str) -> None:
    """Zero the residual output projections (``o_proj``/``out_proj`` of the mixer, ``down_proj`` of the MLP) of
    ``model``'s blocks: ``linear`` = the mixers of linear layers only, ``all`` = every mixer and MLP, ``none`` =
    nothing. A zeroed branch adds nothing at the start and grows from its first gradient step (as in ReZero or
    modded-nanogpt's zero-initialised projections); the runs behind the option: docs/recall-probe.md."""
    if which == "none":
        return
    for block in model.blocks:
        spec = model.layout.layers[block.index]
        linear = spec.mixer != ATTN and not spec.attn_heads  # a head-wise layer keeps its attention heads' output
        for name, module in block.named_modules():
            if name.rsplit(".", 1)[-1] not in RESIDUAL_PROJ or not isinstance(module, nn.Linear):
                continue
            if which == "all" or (linear and name.startswith("mixer")):
                module.weight.zero_()


def probe_layout(layout: Layout, cfg: RecallProbeConfig) -> Layout:
    """The model a probe trains: ``layout`` itself, or its pattern at ``cfg.width`` (`presets.at_scale`: the
    mixer per layer, attention placement, head-wise shares and windows kept; width-derived mixer options at the
    new width's defaults; depth and vocab kept, heads kept unless ``cfg.heads``, the MLP scaled with the width)."""
    width, heads = cfg.width or layout.d_model, cfg.heads or layout.num_heads
    if width == layout.d_model and heads == layout.num_heads:
        return layout
    if width % heads:
        raise ConfigError(f"recall.width: {width} must be a multiple of the probe's num_heads {heads} "
                          f"(recall.heads, or the layout's)")
    mlp = max(8, round(layout.mlp_hidden * width / layout.d_model / 8) * 8)
    scale = Scale(f"probe{width}x{heads}", layout.n_layers, width, heads, mlp, layout.vocab_size)
    return at_scale(layout, scale, name=layout.name)


def build_replicas(layout: Layout, seeds: Sequence[int], cfg: RecallProbeConfig, init_std: float | None,
                   dev: torch.device) -> ReplicaStack:
    """One probe model per seed (``layout`` at the probe width, replica r initialised from ``seeds[r]``), stacked.

    Args:
        layout: the user's layout (narrowed here with `probe_layout`).
        seeds: one per replica.
        cfg: the probe recipe (``zero_init``, ``prev_token``, ``weight_decay``; on CUDA ``kernels`` and
            ``compile`` decide whether the replicas are vectorised and their blocks compiled).
        init_std: Linear/Embedding init std (also of the previous-token embedding); None = `width_scaled_std`
            of the probe width.
        dev: device.
    """
    lay = probe_layout(layout, cfg)
    std = init_std if init_std is not None else width_scaled_std(lay.d_model)
    extra: list[Callable[[nn.Module], None]] = [lambda m: zero_residual_outputs(m, cfg.zero_init)]
    if cfg.prev_token:
        extra.append(lambda m: PrevTokenEmbedding.attach(m, std))
    cuda, stacked = dev.type == "cuda", cfg.kernels in STACKABLE
    return ReplicaStack(lay, seeds, std, cfg.weight_decay, dev, extra, vectorise=not cuda or stacked,
                        compile_blocks=cuda and cfg.compile and stacked)
