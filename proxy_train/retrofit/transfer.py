"""Stage 1, attention transfer: every layer's linear mixer of one kind learns to stand in for the teacher's
attention at that layer, all layers at once, once per (teacher, kind, options), cached beside the teacher.

Why once per kind and not per layout: the target of layer ``i`` (the teacher's attention output) and its input
(the teacher's normed hidden state at layer ``i``) do not depend on which other layers a layout replaces. So a
kind's 24 mixers train together on fresh teacher activations (one teacher forward per step, hooks collect every
layer's mixer input and output), and any layout assembles its linear layers from them. The same per-layer
mixers are the branch initialisation a supernet over placements needs (issue 32).

Loss: per layer the relative squared error ``||y_s - y_t||^2 / ||y_t||^2`` over the batch, summed over the
layers (the layers are independent problems; Adam's per-parameter scaling makes the sum a set of separate
trainings). Reported: the relative error ``sqrt`` of it per layer on held-out rows, before and after.

The mixers start from `mapping.map_attention` (``TransferConfig.start``). Kinds with forget-gate lower bounds
(HGRN, HGRN-2) see the bound their layer starts with in a student (``HylaLM.bound_rows`` of a zero table: layer
``i`` of ``L`` at ``i / L``).

Cache: ``<cache_dir>/transfer/<key>.pt`` (one state dict per layer) and ``<key>.json`` (recipe, errors, wall
time), ``key`` the content hash of the teacher's key, the layer spec, the transfer recipe and `CODE_VERSION`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from torch import nn

from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.model.mixers import build_mixer
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.retrofit.cache import entry_path
from hyla.proxy_train.retrofit.config import RetrofitConfig, TransferConfig
from hyla.proxy_train.retrofit.data import RetrofitData
from hyla.proxy_train.retrofit.mapping import map_attention
from hyla.space.layout import LayerSpec, Layout

#: changes whenever this module changes what a cached transfer is (part of its cache key)
CODE_VERSION = "transfer-1"


@dataclass
class Transfer:
    """A kind's stage-1 mixers: ``states[i]`` is layer i's state dict; relative errors per layer before/after."""

    spec: LayerSpec
    states: list[dict[str, torch.Tensor]]
    error_before: list[float]
    error_after: list[float]
    wall_s: float
    cached: bool = False


class _Taps:
    """Forward hooks on every block's mixer of the teacher: the last forward's (input, output) per layer."""

    def __init__(self, teacher: HylaLM) -> None:
        self.seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [b.mixer.register_forward_hook(self._hook(i)) for i, b in enumerate(teacher.blocks)]

    def _hook(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[Any, ...], output: tuple[torch.Tensor, Any]) -> None:
            self.seen[i] = (inputs[0].detach(), output[0].detach())
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def kind_layout(teacher_layout: Layout, spec: LayerSpec) -> Layout:
    """``teacher_layout``'s shape with every layer ``spec`` (the layout the kind's per-layer mixers come from)."""
    return teacher_layout.with_layers([spec] * teacher_layout.n_layers, name=f"{spec.mixer}-pure")


def start_bounds(layout: Layout) -> torch.Tensor | None:
    """Every layer's forget-gate lower bound as a fresh student starts with it (``HylaLM.bound_rows`` of zeros)."""
    shape = layout.lower_bound_shape()
    if shape is None:
        return None
    p = torch.zeros(shape).softmax(0)
    return p.cumsum(0) - p[0]


def _errors(mixers: nn.ModuleList, taps: _Taps, bounds: torch.Tensor | None,
            bounded: set[int]) -> list[torch.Tensor]:
    out = []
    for i, mixer in enumerate(mixers):
        x, y = taps.seen[i]
        extra = {"lower_bound": bounds[i].to(x.device)} if (bounds is not None and i in bounded and i > 0) else {}
        pred = mixer(x, **extra)[0]
        out.append((pred - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-12))
    return out


def train_transfer(teacher: HylaLM, spec: LayerSpec, cfg: TransferConfig, data: RetrofitData,
                   device: torch.device, log: Callable[[str], None] = print) -> Transfer:
    """Stage 1 for one kind (module docstring) on ``teacher`` (its layout, all attention)."""
    t0 = time.perf_counter()
    layout = kind_layout(teacher.layout, spec)
    mixers = nn.ModuleList(build_mixer(layout, i) for i in range(layout.n_layers))
    for i, mixer in enumerate(mixers):
        map_attention(mixer, teacher.blocks[i].mixer, cfg.start)
    mixers.to(device).train()
    teacher.to(device).eval()
    bounds, bounded = start_bounds(layout), set(layout.bounded_layers())
    taps = _Taps(teacher)
    rng = np.random.default_rng([0x57A6E1])
    held = data.batch(np.random.default_rng([0x57A6E1, 1]), cfg.batch_size, round(cfg.batch_size * cfg.lm_share))

    @torch.no_grad()
    def held_out() -> list[float]:
        teacher(held.inputs.to(device))
        return [float(e.sqrt()) for e in _errors(mixers, taps, bounds, bounded)]

    try:
        before = held_out()
        opt = torch.optim.AdamW(mixers.parameters(), lr=cfg.lr, weight_decay=0.0)
        warmup = max(1, cfg.steps // 10)
        for step in range(cfg.steps):
            for group in opt.param_groups:
                group["lr"] = wsd_lr(step, cfg.steps, cfg.lr, warmup, 0.3, 0.1)
            batch = data.batch(rng, cfg.batch_size, round(cfg.batch_size * cfg.lm_share))
            with torch.no_grad():
                teacher(batch.inputs.to(device))
            loss = torch.stack(_errors(mixers, taps, bounds, bounded)).sum()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if (step + 1) % 100 == 0:
                log(f"transfer {spec.mixer} step {step + 1}/{cfg.steps}: mean relative error "
                    f"{float(loss.detach() / len(mixers)) ** 0.5:.3f}")
        after = held_out()
    finally:
        taps.remove()
    mixers.cpu()
    return Transfer(spec, [m.state_dict() for m in mixers], before, after, time.perf_counter() - t0)


def transfer_recipe(teacher_key: str, spec: LayerSpec, rcfg: RetrofitConfig) -> dict[str, Any]:
    """Everything that decides a kind's stage 1: its cache key's content."""
    return {"version": CODE_VERSION, "teacher": teacher_key, "spec": spec.to_obj(),
            "transfer": dataclasses.asdict(rcfg.transfer)}


def load_transfer(teacher: HylaLM, teacher_key: str, spec: LayerSpec, rcfg: RetrofitConfig, data: RetrofitData,
                  device: torch.device, log: Callable[[str], None] = print) -> Transfer:
    """A kind's stage-1 mixers from the cache, or trained now under the entry's file lock and stored."""
    recipe = transfer_recipe(teacher_key, spec, rcfg)
    weights = entry_path("transfer", recipe, ".pt", rcfg.cache_dir)
    meta = weights.with_suffix(".json")
    with FileLock(str(weights) + ".lock"):
        if weights.exists() and meta.exists():
            info = json.loads(meta.read_text())
            states = torch.load(weights, map_location="cpu", weights_only=True)
            return Transfer(spec, states, info["error_before"], info["error_after"], info["wall_s"], cached=True)
        log(f"transfer {spec.mixer}: training ({rcfg.transfer.steps} steps, {teacher.layout.n_layers} layers)")
        tr = train_transfer(teacher, spec, rcfg.transfer, data, device, log)
        tmp = weights.with_name(weights.name + ".tmp")
        torch.save(tr.states, tmp)
        tmp.replace(weights)
        info = {"recipe": recipe, "error_before": tr.error_before, "error_after": tr.error_after,
                "wall_s": tr.wall_s}
        tmp = meta.with_name(meta.name + ".tmp")
        tmp.write_text(json.dumps(info, indent=1) + "\n")
        tmp.replace(meta)
        return tr
