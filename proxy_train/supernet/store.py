"""A trained supernet, once per (teacher, space, recipe): cached like issue 31's teacher, under one file lock.

Entry: ``<cache_dir>/supernet/<key>.pt`` (the supernet's own weights: branches, head-wise norms, bound tables, and
the teacher's copy only when ``train_base`` changed it) and ``<key>.json`` (recipe, training curve, wall time).
``key`` is the content hash (`hyla.proxy_train.retrofit.cache.content_key`) of `supernet_recipe`: the teacher's
key, the per-layer choices, the sampler (the study's space), the data recipe, `SupernetTrain` and the init's recipe,
plus `CODE_VERSION`. Concurrent workers asking for the same entry wait on its lock; one trains, all load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from filelock import FileLock

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.retrofit.cache import entry_path
from hyla.proxy_train.supernet.choices import Choices, Sampler
from hyla.proxy_train.supernet.config import SupernetTrain
from hyla.proxy_train.supernet.init import TransferSource, initialise
from hyla.proxy_train.supernet.model import Builder, Supernet
from hyla.proxy_train.supernet.train import DistillData, train_supernet

#: changes whenever the code changes what a cached supernet is (part of its key)
CODE_VERSION = "supernet-1"


def state_key(module: torch.nn.Module) -> str:
    """Content hash of a module's weights (names, shapes, dtypes, bytes): names a teacher that has no recipe."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def init_recipe(cfg: SupernetTrain, transfer_key: str | None) -> dict[str, Any]:
    """What decides the branches' starting point (`initialise`'s result), known before any work."""
    if cfg.init == "fresh":
        return {"init": "fresh", "seed": cfg.seed}
    if cfg.init == "transfer":
        return {"init": "transfer", "stage1": transfer_key}
    return {"init": cfg.init}


def supernet_recipe(teacher_key: str, choices: Choices, sampler: Sampler, data_recipe: dict[str, Any],
                    cfg: SupernetTrain, transfer_key: str | None = None) -> dict[str, Any]:
    """Everything that decides a trained supernet: its cache key's content."""
    return {"version": CODE_VERSION, "teacher": teacher_key,
            "choices": [[s.to_obj() for s in layer] for layer in choices], "sampler": sampler.describe(),
            "data": data_recipe, "train": dataclasses.asdict(cfg), "init": init_recipe(cfg, transfer_key)}


def _own_state(net: Supernet, with_base: bool) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in net.state_dict().items() if with_base or not k.startswith("base.")}


def load_or_train(teacher: HylaLM, teacher_key: str, choices: Choices, sampler: Sampler, data: DistillData,
                  data_recipe: dict[str, Any], cfg: SupernetTrain, device: torch.device, *, build: Builder = HylaLM,
                  transfer: TransferSource | None = None, transfer_key: str | None = None,
                  cache_root: str | None = None, log: Callable[[str], None] = print) -> tuple[Supernet, dict[str, Any]]:
    """The trained supernet of this recipe: loaded from the cache, or initialised, trained and stored now.

    Returns:
        ``(supernet on device, info)``; ``info`` has ``key``, ``cached`` (True when loaded), ``train_s`` (the
        training time of whoever trained it), ``init_s`` and the training ``curve``.
    """
    recipe = supernet_recipe(teacher_key, choices, sampler, data_recipe, cfg, transfer_key)
    path = entry_path("supernet", recipe, ".pt", cache_root)
    meta = path.with_suffix(".json")
    net = Supernet(teacher, choices, build)
    with FileLock(str(path) + ".lock"):
        if path.exists() and meta.exists():
            info = json.loads(meta.read_text())
            missing, unexpected = net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True),
                                                      strict=False)
            if unexpected or any(not k.startswith("base.") for k in missing) or (cfg.train_base and missing):
                raise ConfigError(f"supernet cache {path}: does not fit this supernet (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]}); delete it")
            log(f"supernet {path.stem}: loaded from the cache")
            return net.to(device).eval(), {**info, "key": path.stem, "cached": True}
        t0 = time.perf_counter()
        initialise(net, cfg.init, cfg.seed, transfer)
        init_s = time.perf_counter() - t0
        log(f"supernet {path.stem}: training ({cfg.steps} steps, {cfg.layouts_per_step} layouts a step)")
        run = train_supernet(net, teacher, data, sampler, cfg, device, log)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(_own_state(net, cfg.train_base), tmp)
        tmp.replace(path)
        info = {"recipe": recipe, "train_s": run["wall_s"], "init_s": init_s, "curve": run["curve"]}
        meta.with_name(meta.name + ".tmp").write_text(json.dumps(info, indent=1, default=str) + "\n")
        meta.with_name(meta.name + ".tmp").replace(meta)
    return net.eval(), {**info, "key": path.stem, "cached": False}
