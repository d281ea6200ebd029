"""The capacity-composed recall family: each mixer's recall measured where training is reliable (two layers),
combined with a layout's attention structure by a rule fixed before any calibration was run (issue 31).

Measurement (Zoology's 2-layer protocol, `measure_curves`)
    For a mixer kind x (every linear kind of the calibration's layouts, and ``attn``) at the calibration's scale:
    a model of two x layers with the scale's width, heads, MLP and vocab, so each layer has exactly the state of
    an x layer in the scale's layouts. It trains on MQAR alone through the recall probe's trainer
    (``probe.runner.run_probes``: the same previous-token help for every kind, curriculum, early stop at 0.99)
    at T = the level set's MQAR length, over every pair count P the level set's levels hold (MQAR pairs, and the
    c x k links of each hop level), with 2 x max P symbols. The best of ``lrs`` (four in [1e-4, 1e-2]) by mean
    accuracy counts; ``acc_x(P)`` is its held-out accuracy at P pairs. A curve is cached per (kind, scale, level
    set's pairs, recipe, seed, budget) under ``$HYLA_CACHE_DIR/capacity`` (`cache`), behind a file lock per kind.

Combination rule (fixed before calibration; `capacity_score`)
    For a layout with ``a`` layers that have softmax heads (whole attention or head-wise), ``n_lin`` layers with
    a linear mixer and linear kinds K, and a level with ``h`` dependent lookups over ``P`` pairs and floor ``f``
    (`tasks.levels.level_profile`: MQAR h = 1, f = 1/P; hop-k with c chains h = k, P = c k, f = 1/c):

    1. one lookup's above-chance success for kind x: ``q_x(P) = clamp((acc_x(P) - 1/P) / (1 - 1/P), 0, 1)``
       (on MQAR with P pairs, guessing one of the context's values scores 1/P);
    2. attention layers do ``c = min(h, a)`` of the lookups, linear layers the other ``u = h - c``, each with
       the success of the layout's best linear kind, ``q_lin(P) = max over K of q_x(P)``;
    3. a level needing more linear lookups than there are linear layers (``u > n_lin``) sits at its floor;
       otherwise ``s = f + (1 - f) * q_attn(P)^c * q_lin(P)^u``;
    4. the layout's score is the mean of ``s`` over each task's levels, then over tasks (`family.suite_score`,
       as `RecallSuite.evaluate`).

    Why this rule: (i) in Zoology's protocol attention keeps its accuracy as pairs grow while a fixed-size state
    falls off, so ``acc_x(P)`` is the kind's recall capacity at this state size, measured where 2-layer training
    is reliable rather than where a deep net may or may not have left the plateau; (ii) a dependent lookup needs
    the previous lookup's result, so k hops take k retrieval steps in sequence, each in its own layer: an
    attention layer does one as well as attention does in the protocol, and the hops no attention layer covers
    fall to linear layers at their measured rate; (iii) hops succeed or fail independently (the product), and a
    failed chain still guesses among the context's values (the floor), which makes a pure linear layout's score
    on an MQAR level exactly its measured accuracy (or the floor, where the 2-layer model has not even learned
    to copy a value from the context: accuracy below 1/P); (iv) placement is ignored, only counts matter (the
    paper only compares uniform placements).

    What it predicts, written down before seeing a calibration: within a mixer, pure < 24:1 < 12:1 <= 6:1 = 3:1
    = the Transformer on a level set with at most 4 hops (4 attention layers cover every hop); all hybrids of
    one attention count tie on the MQAR levels, and mixers differ only through their pure, 24:1 and 12:1
    layouts. It cannot rank mixers at 6:1 or 3:1.

Public API (stable): ``CapacityRecipe``, ``CODE_VERSION``, ``measure_curves(kinds, scale, pairs, seq_len,
recipe, seeds, budget, device, cache_root=None, log=print) -> dict[(kind, seed), Curve]``, ``Curve``,
``capacity_score(layout, profiles, curves) -> (score, levels, floor)``, ``run_capacity_family(jobs, ctx,
on_result)``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from filelock import FileLock

from hyla.config import ConfigError
from hyla.proxy_train.retrofit.cache import entry_path
from hyla.proxy_train.retrofit.family import FamilyContext, FamilyJob, FamilyResult, suite_score
from hyla.proxy_train.tasks.levels import LevelProfile
from hyla.space.layout import ATTN, Layout
from hyla.space.presets import get_scale

#: changes whenever the measurement's code changes what a curve means (part of every cache key)
CODE_VERSION = "capacity-1"


@dataclass(frozen=True, kw_only=True)
class CapacityRecipe:
    """How a capacity curve is measured (`measure_curves`); ``steps`` is the rung-0 budget (x the job's budget).

    The other fields are the recall probe's (``RecallProbeConfig``) with Zoology-style choices: four learning
    rates spread over [1e-4, 1e-2], no zero-init (two layers need no depth help), the probe's previous-token help.
    """

    steps: int = 300
    batch_size: int = 32
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2)
    warmup: int = 20
    eval_every: int = 50
    eval_examples: int = 256
    prev_token: bool = True
    curriculum: float = 0.25
    pool_rows: int = 4096

    def probe_config(self, pairs: Sequence[int], seq_len: int, budget: int) -> Any:
        from hyla.proxy_train.probe.config import RecallProbeConfig

        return RecallProbeConfig(seq_len=seq_len, pairs=tuple(sorted(set(pairs))), task_vocab=2 * max(pairs),
                                 steps=self.steps * budget, batch_size=self.batch_size, lrs=tuple(self.lrs),
                                 warmup=self.warmup, eval_every=self.eval_every, eval_examples=self.eval_examples,
                                 prev_token=self.prev_token, zero_init="none", curriculum=self.curriculum,
                                 pool_rows=self.pool_rows)


@dataclass(frozen=True)
class Curve:
    """A kind's measured MQAR accuracy per pair count (best lr), with how it was obtained."""

    kind: str
    seed: int
    acc: dict[int, float]
    best_lr: float
    wall_s: float
    key: str

    def q(self, pairs: int) -> float:
        """Above-chance success of one lookup over ``pairs`` pairs (rule step 1)."""
        if pairs not in self.acc:
            raise ConfigError(f"capacity curve of {self.kind}: no measurement at {pairs} pairs "
                              f"(measured: {sorted(self.acc)})")
        if pairs == 1:
            return 1.0 if self.acc[pairs] >= 1.0 else 0.0
        return min(1.0, max(0.0, (self.acc[pairs] - 1.0 / pairs) / (1.0 - 1.0 / pairs)))


def two_layer(kind: str, scale: str) -> Layout:
    """The protocol's model of ``kind`` at ``scale``'s shape: two ``kind`` layers."""
    return get_scale(scale).layout([kind, kind], name=f"{kind}-2layer@{scale}")


def measure_curves(kinds: Sequence[str], scale: str, pairs: Sequence[int], seq_len: int, recipe: CapacityRecipe,
                   seeds: Sequence[int], budget: int, device: str, cache_root: str | None = None,
                   log: Callable[[str], None] = print) -> dict[tuple[str, int], Curve]:
    """Every (kind, seed)'s curve, from the cache or measured (the seeds and lrs of a kind trained side by side).

    Args:
        kinds: mixer kinds (linear kinds and/or ``attn``).
        scale: the layouts' scale (width, heads, MLP, vocab of the 2-layer models).
        pairs: the pair counts to measure (the level set's, `level_pairs`).
        seq_len: MQAR length T (>= 4 x max pairs).
        recipe: training recipe; budget: multiplier of ``recipe.steps``; seeds: initialisation and row seeds.
    """
    import torch
    from hyla.proxy_train.probe.runner import ProbeJob, best_of_lrs, run_probes
    from hyla.proxy_train.probe.levels import probe_levels

    cfg = recipe.probe_config(pairs, seq_len, budget)
    out: dict[tuple[str, int], Curve] = {}
    for kind in kinds:
        layout = two_layer(kind, scale)
        kind_recipe = {"version": CODE_VERSION, "layout": layout.to_dict(), "probe": dataclasses.asdict(cfg)}
        recipes = {s: {**kind_recipe, "seed": s} for s in seeds}
        paths = {s: entry_path("capacity", r, ".json", cache_root) for s, r in recipes.items()}
        with FileLock(str(entry_path("capacity", kind_recipe, ".lock", cache_root))):  # one measurer per kind
            missing = [s for s in seeds if not paths[s].exists()]
            if missing:
                log(f"capacity: measuring {kind} at {scale} (seeds {missing}, {len(cfg.lrs)} lrs, {cfg.steps} "
                    f"steps, pairs {list(cfg.pairs)}, T {cfg.seq_len})")
                jobs = [ProbeJob(layout, s, lr) for s in missing for lr in cfg.lrs]
                runs = run_probes(jobs, cfg, torch.device(device), None, log=log)
                levels = probe_levels(cfg, layout.vocab_size)
                for s in missing:
                    mine = [r for j, r in zip(jobs, runs) if j.seed == s]
                    best = best_of_lrs(mine, levels, 0.0)
                    wall = max(r["wall_s"] for r in mine) * len(mine) / max(r["stacked"] for r in mine)
                    entry = {"acc": {str(p): a for p, a in zip(cfg.pairs, best["levels"].values())},
                             "best_lr": best["lr"], "wall_s": wall, "per_lr": best["per_lr"]}
                    tmp = paths[s].with_name(paths[s].name + ".tmp")
                    tmp.write_text(json.dumps({"recipe": recipes[s], "result": entry}, default=str) + "\n")
                    tmp.replace(paths[s])
        for s in seeds:
            entry = json.loads(paths[s].read_text())["result"]
            out[(kind, s)] = Curve(kind, s, {int(p): a for p, a in entry["acc"].items()}, entry["best_lr"],
                                   entry["wall_s"], paths[s].stem)
    return out


def layout_structure(layout: Layout) -> tuple[int, int, tuple[str, ...]]:
    """``(a, n_lin, kinds)``: layers with softmax heads, layers with a linear mixer, the linear kinds."""
    a = sum(1 for spec in layout.layers if spec.mixer == ATTN or spec.attn_heads)
    linear = [spec.mixer for spec in layout.layers if spec.mixer != ATTN]
    return a, len(linear), tuple(sorted(set(linear)))


def capacity_score(layout: Layout, profiles: Sequence[LevelProfile],
                   curves: Mapping[str, Curve]) -> tuple[float, dict[str, float], float]:
    """The rule of the module docstring: ``(score, level -> s, floor score)`` of ``layout`` from one seed's
    ``curves`` (kind -> `Curve`, ``attn`` and the layout's linear kinds)."""
    a, n_lin, kinds = layout_structure(layout)
    for kind in (*kinds, ATTN):
        if kind not in curves:
            raise ConfigError(f"capacity score of {layout.name}: no curve for {kind!r} (have {sorted(curves)})")
    levels: dict[str, float] = {}
    for p in profiles:
        c = min(p.lookups, a)
        u = p.lookups - c
        if u > n_lin:
            levels[p.level] = p.floor
            continue
        q_lin = max((curves[k].q(p.pairs) for k in kinds), default=0.0)
        success = curves[ATTN].q(p.pairs) ** c * (q_lin ** u if u else 1.0)
        levels[p.level] = p.floor + (1.0 - p.floor) * success
    floor = suite_score({p.level: p.floor for p in profiles})
    return suite_score(levels), levels, floor


def level_pairs(profiles: Sequence[LevelProfile]) -> list[int]:
    """The distinct pair counts of a level set: what `measure_curves` measures."""
    return sorted({p.pairs for p in profiles})


def run_capacity_family(jobs: list[FamilyJob], ctx: FamilyContext,
                        on_result: Callable[[FamilyJob, FamilyResult], None]) -> None:
    """The capacity-composed score of every job (``family.Runner``): curves per budget and seed, then the rule.

    ``ctx.options["capacity"]`` overrides `CapacityRecipe` fields (e.g. ``{"steps": 100}``).
    """
    from hyla.proxy_train.tasks import RecallSuite, level_profile

    opts = dict(ctx.options.get("capacity", {}))
    if "lrs" in opts:
        opts["lrs"] = tuple(opts["lrs"])
    recipe = CapacityRecipe(**opts)
    vocab = get_scale(ctx.scale).vocab_size
    suite = RecallSuite.named(ctx.level_set, vocab)
    profiles = [level_profile(g) for g in suite.generators]
    seq_len = max(s.seq_len for s in suite.specs if s.task == "mqar")
    kinds = sorted({k for j in jobs for k in layout_structure(j.layout)[2]} | {ATTN})
    for budget in sorted({j.budget for j in jobs}):
        if ctx.stop():
            return
        group = [j for j in jobs if j.budget == budget]
        seeds = sorted({j.seed for j in group})
        curves = measure_curves(kinds, ctx.scale, level_pairs(profiles), seq_len, recipe, seeds, budget,
                                ctx.device, ctx.cache_root, ctx.log)
        for job in group:
            t0 = time.perf_counter()
            mine = {k: curves[(k, job.seed)] for k in kinds}
            score, levels, floor = capacity_score(job.layout, profiles, mine)
            used = [mine[k] for k in (*layout_structure(job.layout)[2], ATTN)]
            on_result(job, FamilyResult(
                recall=score, levels=levels, floor=floor, wall_s=time.perf_counter() - t0,
                budget_steps=recipe.steps * budget,
                shared={f"capacity:{c.kind}:{c.key}": c.wall_s for c in used},
                extra={"curves": {c.kind: {"acc": c.acc, "best_lr": c.best_lr} for c in used},
                       "recipe": dataclasses.asdict(recipe)}))
