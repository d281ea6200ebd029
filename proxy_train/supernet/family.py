"""The supernet as a proxy's recall family: ``recall: {family: supernet, ...}`` scores layouts by inheritance.

A rung whose proxy says ``train_lm: false`` and ``recall: {family: supernet}`` scores every trial from one supernet
over the study's space (`SupernetRecall.space`, filled by the study from its own space), trained once per (teacher,
space, recipe) and cached (`store.load_or_train`). The teacher, its data and stage 1 are issue 31's retrofit
recipe (`SupernetRecall.retrofit`, the same cache entries as the retrofit proxy of the same recipe). A worker keeps
its supernets in memory (`_RUNS`), so after the first trial a layout costs one routed pass; a search sends a worker
``batch`` trials per call (`run_many`).

Seeds: seed ``s`` is a supernet trained with ``train.seed + s`` (its own cache entry), so ``seeds: 3`` reports the
spread of the inherited scores over three supernets. A result's ``family_extra`` names each seed's supernet (cache
key, training seconds, whether it came from the cache).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyla.config import ConfigError
from hyla.proxy_train.supernet.config import SupernetRecall
from hyla.space.layout import ATTN, LayerSpec, Layout
from hyla.space.search_space import SearchSpace


def space_for(recall: SupernetRecall, layout: Layout) -> SearchSpace:
    """The space the supernet covers: ``recall.space``, else one built around ``layout`` (its linear kinds with
    their options, free placement) at the scale of its shape."""
    if recall.space is not None:
        return recall.space
    from hyla.space.presets import SCALES

    scale = next((s.name for s in SCALES.values() if (s.d_model, s.num_heads, s.mlp_hidden, s.vocab_size) ==
                  (layout.d_model, layout.num_heads, layout.mlp_hidden, layout.vocab_size)), None)
    if scale is None:
        raise ConfigError(f"recall.space: layout {layout.name or layout.key()} has no scale's shape; give the "
                          "supernet's search space (a study sets its own)")
    kinds = layout.linear_mixers or ("gla",)
    options = {s.mixer: dict(s.options) for s in layout.layers if not s.is_attention and s.options}
    return SearchSpace(scale=scale, n_layers=layout.n_layers, mixers=kinds, per_layer_mixer=len(kinds) > 1,
                       placements=("free",), n_attention=(0,), mixer_options=options)


def check(recall: SupernetRecall, layout: Layout) -> None:
    """A layout must be one of the supernet's space (ConfigError naming the first mismatch)."""
    from hyla.space.search_space import layout_to_params

    layout_to_params(layout, space_for(recall, layout))


@dataclass
class SupernetRun:
    """A trained supernet with everything scoring needs (one per recipe and seed in a process): the held-out
    rows, its cache info, the teacher and data (for a fine-tune before scoring) and the mixers' kernel context."""

    net: Any
    rows: Any
    info: dict[str, Any]
    teacher: Any
    data: Any
    device: Any
    kernels: Callable[[], Any]


_RUNS: dict[str, SupernetRun] = {}


def supernet_run(recall: SupernetRecall, layout: Layout, seed: int, log: Callable[[str], None] = print) -> SupernetRun:
    """The supernet of seed ``seed`` (``train.seed + seed``) for ``layout``'s study: cached in this process, else
    loaded from (or trained into) the cache."""
    from hyla.proxy_train.retrofit.cache import content_key
    from hyla.proxy_train.retrofit.proxy import Retrofitter
    from hyla.proxy_train.retrofit.teacher import build_model
    from hyla.proxy_train.retrofit.transfer import transfer_recipe
    from hyla.proxy_train.supernet.choices import SpaceSampler, layer_choices
    from hyla.proxy_train.supernet.score import eval_rows
    from hyla.proxy_train.supernet.store import load_or_train

    space = space_for(recall, layout)
    train = dataclasses.replace(recall.train, seed=recall.train.seed + seed)
    memo = content_key({"space": space.to_dict(), "retrofit": dataclasses.asdict(recall.retrofit),
                        "train": dataclasses.asdict(train), "score": dataclasses.asdict(recall.score)})
    if memo in _RUNS:
        return _RUNS[memo]
    rf = Retrofitter(space.base_layout([ATTN] * space.depth), recall.retrofit, log)
    teacher = rf.teacher.model
    choices = layer_choices(space)
    rcfg = recall.retrofit
    specs = sorted({(s.mixer, s.options) for c in choices for s in c if not s.is_attention})
    transfer_key = content_key({f"{m}{o}": transfer_recipe(rf.teacher.key, LayerSpec(mixer=m, options=o), rcfg)
                                for m, o in specs})
    data_recipe = {"levels": rcfg.levels, "seq_len": rcfg.seq_len, "text": dataclasses.asdict(rcfg.text),
                   "pool_rows": rcfg.pool_rows}
    prev = hasattr(teacher, "prev_token_embedding")
    with rf._kernels():
        net, info = load_or_train(teacher, rf.teacher.key, choices, SpaceSampler(space), rf.data, data_recipe, train,
                                  rf.device, build=lambda lay: build_model(lay, prev),
                                  transfer=lambda spec: rf.transfer(spec).states, transfer_key=transfer_key,
                                  cache_root=rcfg.cache_dir, log=log)
        rows = eval_rows(rf.data, teacher, recall.score, rf.device)
    info = {**info, "teacher": rf.teacher.key, "shared": dict(rf.shared)}
    _RUNS[memo] = SupernetRun(net, rows, info, teacher, rf.data, rf.device, rf._kernels)
    return _RUNS[memo]


def run_many(proxy: Any, layouts: list[Layout], seeds: list[int], dev: Any, progress: bool) -> list[list[dict[str, Any]]]:
    """Per layout, one result dict per seed: inherited ``recall``, ``recall_tasks``, ``lm_val_loss``,
    ``kl_to_teacher`` and ``family_extra`` (module docstring)."""
    from hyla.proxy_train.supernet.score import finetuner, score_layouts

    recall: SupernetRecall = proxy.recall
    if recall.retrofit.device == "auto" and str(dev).startswith("cuda"):
        recall = dataclasses.replace(recall, retrofit=dataclasses.replace(recall.retrofit, device=str(dev)))
    per_layout: list[list[dict[str, Any]]] = [[] for _ in layouts]
    for seed in seeds:
        run = supernet_run(recall, layouts[0], seed, log=print if progress else (lambda _: None))
        tune = (finetuner(run.net, run.teacher, run.data, dataclasses.replace(recall.train, seed=recall.train.seed
                                                                                + seed), recall.score, run.device)
                if recall.score.finetune_steps else None)
        with run.kernels():
            scores = score_layouts(run.net, run.rows, [lay.layers for lay in layouts], recall.score, finetune=tune)
        extra = {k: run.info.get(k) for k in ("key", "cached", "train_s", "teacher")}
        for out, s in zip(per_layout, scores):
            if proxy.train_lm:  # the proxy's own LM run measured lm_val_loss; the inherited one is not it
                s = {k: v for k, v in s.items() if k != "lm_val_loss"}
            out.append({**s, "family_extra": {**extra, "seed": recall.train.seed + seed}})
    return per_layout


def run(proxy: Any, layout: Layout, seeds: list[int], dev: Any, progress: bool) -> list[dict[str, Any]]:
    """`run_many` for one layout."""
    return run_many(proxy, [layout], seeds, dev, progress)[0]



def calibration_space(layouts: list[Layout]) -> SearchSpace:
    """The smallest space of the usual form holding ``layouts`` (one shape): their linear kinds, one kind per
    layout, and the ratios of their ``uniform_last`` placements (the Transformer is ratio 1, a pure layout 0); free
    placement when some layout has no ratio."""
    from hyla.space.search_space import layout_to_params, ratio_indices

    n = layouts[0].n_layers
    ratios = []
    for lay in layouts:
        r = next((r for r in range(n + 1) if ratio_indices("uniform_last", n, r) == lay.attention_layers), None)
        if r is None:
            ratios = None
            break
        ratios.append(r)
    kinds = tuple(dict.fromkeys(m for lay in layouts for m in lay.linear_mixers)) or ("gla",)
    probe = space_for(SupernetRecall(), layouts[0])
    if ratios is None:
        space = dataclasses.replace(probe, mixers=kinds, per_layer_mixer=len(kinds) > 1)
    else:
        unique = {tuple(ratio_indices("uniform_last", n, r)): r for r in ratios}
        space = SearchSpace(scale=probe.scale, n_layers=n, mixers=kinds, ratios=tuple(sorted(unique.values())),
                            placements=("uniform_last",))
    for lay in layouts:
        layout_to_params(lay, space)
    return space


def run_supernet_family(jobs: list[Any], ctx: Any, on_result: Callable[[Any, Any], None]) -> None:
    """The calibration driver's runner (``hyla.proxy_train.retrofit.family.Runner``): the jobs' layouts scored by
    inheritance from one supernet per job seed over the calibration's own space (`calibration_space`);
    ``ctx.options["supernet"]`` holds `SupernetRecall` fields (its ``retrofit`` over ``ctx.options["retrofit"]``,
    ``levels`` = ``ctx.level_set``). A job's budget multiplies the supernet's training steps."""
    import time

    from hyla.config import from_mapping
    from hyla.proxy_train.retrofit.family import FamilyResult, suite_score
    from hyla.proxy_train.supernet.score import score_layouts

    if not jobs:
        return
    opts = dict(ctx.options.get("supernet", {}))
    retrofit = {**ctx.options.get("retrofit", {}), **opts.pop("retrofit", {})}
    retrofit.setdefault("levels", ctx.level_set)
    retrofit.setdefault("device", ctx.device)
    if ctx.cache_root is not None:
        retrofit.setdefault("cache_dir", ctx.cache_root)
    base = from_mapping(SupernetRecall, {**opts, "retrofit": retrofit}, "supernet options")
    space = base.space or calibration_space([j.layout for j in jobs])
    groups: dict[tuple[int, int], list[Any]] = {}
    for job in jobs:
        groups.setdefault((job.seed, job.budget), []).append(job)
    for (seed, budget), group in sorted(groups.items()):
        if ctx.stop():
            return
        recall = dataclasses.replace(base, space=space,
                                     train=dataclasses.replace(base.train, steps=base.train.steps * budget))
        run = supernet_run(recall, group[0].layout, seed, ctx.log)
        t0 = time.perf_counter()  # the supernet's training is a shared cost (below), counted once
        with run.kernels():
            scores = score_layouts(run.net, run.rows, [j.layout.layers for j in group], recall.score)
        wall = (time.perf_counter() - t0) / len(group)
        shared = {**run.info.get("shared", {}),
                  f"supernet:{run.info['key']}": 0.0 if run.info.get("cached") else float(run.info.get("train_s", 0))}
        for job, sc in zip(group, scores):
            on_result(job, FamilyResult(recall=sc["recall"], levels=sc["recall_tasks"], floor=suite_score(run.data.floors),
                                        wall_s=wall, budget_steps=recall.train.steps, shared=shared,
                                        extra={"kl": sc["kl_to_teacher"], "lm_loss": sc["lm_val_loss"],
                                               "supernet": run.info["key"]}))
