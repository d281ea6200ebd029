"""Supernet benchmark (issue 32): how fast layouts are scored by inheritance, whether those scores rank layouts as
the stand-alone proxies do, and whether a searched placement beats the uniform one.

Three parts (``--parts``), each written into the result JSON as soon as it is done:

- ``throughput`` (at ``--throughput-scale``): a supernet over a per-layer space (gla, gdn, hgrn2, deltanet at every
  layer, free placement, head-wise layers with one softmax head) from the retrofit teacher of that scale; then
  ``--layouts`` distinct layouts of the space scored by inheritance: ``layouts_per_minute`` (scoring only, after a
  warm-up chunk) beside ``supernet_train_s`` and the teacher's and stage 1's training seconds (0 when cached).
- ``validity`` (at ``--validity-scale``): the calibration set (the Transformer; gla, gdn, hgrn2, deltanet at 24:1,
  12:1, 6:1, 3:1 and pure; retnet and hgrn pure and 6:1) scored by inheritance (one supernet per seed over the
  calibration's own space) and by the stand-alone retrofit proxy (issue 31), and by the from-scratch recall probe
  (``--probe``): ``inherited_vs_standalone_spearman`` and ``inherited_vs_probe_spearman`` of the seed-mean recall.
- ``placement`` (at ``--placement-scale``): for each budget (``--budgets``, attention layers of 24) the placement
  that the beam search finds on the placement supernet of the retrofit teacher, and the uniform placement, both
  trained stand-alone by the retrofit proxy with ``--seeds`` seeds: ``placement_beats_uniform`` when the searched
  mean exceeds the uniform one by more than 2 x the combined standard error.

Every stand-alone run is appended to ``--records`` (JSONL, keyed by the recipe) as it finishes, so a run cut by
``--max-seconds`` continues where it stopped when the same command runs again; teachers, stage 1 and supernets come
from the cache (``--cache-dir``).

The CPU commands of the committed results (one torch thread per process, ``--threads 1``: with 2 threads on the
loaded 2-core machine a run was ~10x slower) are in docs/supernet.md and in each result's ``runs``; on one GPU,
one call of <= 10 min: ``bash tools/supernet_gpu.sh``.

A command adds its parts to the JSON at ``--out`` as each ends (``runs``: each part's command and machine), so
commands with the same ``--out`` may run one after another or side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, Deadline, log, machine_info, main_guard, parse_sets, read_json, read_jsonl, write_json

NAME = "supernet"
CALIBRATION = ["transformer"] \
    + [f"{m}-{r}" for m in ("gla", "gdn", "hgrn2", "deltanet") for r in ("24:1", "12:1", "6:1", "3:1", "pure")] \
    + [f"{m}-{r}" for m in ("retnet", "hgrn") for r in ("pure", "6:1")]
THROUGHPUT_KINDS = ("gla", "gdn", "hgrn2", "deltanet")


def register_mqar_levels(spec: str) -> str:
    """``NAME:T:P1,P2,...:VOCAB`` -> an MQAR-only level set ``NAME`` in the product's registry (``SUITE_LEVELS``):
    one level per pair count at length ``T`` with ``VOCAB`` symbols. Returns the name."""
    from hyla.config import ConfigError
    from hyla.proxy_train.tasks.suite import SUITE_LEVELS, RecallTaskSpec

    try:
        name, seq_len, pairs, vocab = spec.split(":")
        levels = tuple(RecallTaskSpec("mqar", int(seq_len), {"num_kv_pairs": int(p), "task_vocab": int(vocab)})
                       for p in pairs.split(","))
    except ValueError:
        raise ConfigError(f"--mqar-levels: {spec!r} is not NAME:T:P1,P2,...:VOCAB (e.g. mqar64:64:2,4,8,16:64)"
                          ) from None
    SUITE_LEVELS[name] = levels
    return name


def retrofit_config(args: argparse.Namespace, scale: str) -> Any:
    """The retrofit recipe at ``scale`` (its level set, ``--set retrofit.*`` overrides)."""
    from hyla.proxy_train.retrofit.config import RetrofitConfig
    from hyla.proxy_train.retrofit.proxy import nest

    data: dict[str, Any] = {"levels": f"retrofit-{scale}", "device": args.device, "cache_dir": args.cache_dir,
                            **({"seq_len": 256} if scale == "mini" else {})}  # mini: hop levels are 128, MQAR 256
    for key, value in nest({k.partition(".")[2]: v for k, v in parse_sets(args.sets).items()
                            if k.startswith("retrofit.")}).items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return RetrofitConfig.from_dict(data, f"retrofit@{scale}")


def supernet_recall(args: argparse.Namespace, scale: str, space: Any) -> Any:
    """`SupernetRecall` over ``space`` (``--supernet-steps``, ``--eval-examples``, ``--chunk``, ``--set
    supernet.train.*`` / ``supernet.score.*``) with the retrofit recipe of ``scale``."""
    from hyla.config import from_mapping
    from hyla.proxy_train.supernet.config import SupernetRecall

    sets = {k.partition(".")[2]: v for k, v in parse_sets(args.sets).items() if k.startswith("supernet.")}
    train, score = {}, {}
    for key, value in sets.items():
        part, _, leaf = key.partition(".")
        (train if part == "train" else score)[leaf] = value
    recall = from_mapping(SupernetRecall, {"train": {"steps": args.supernet_steps, **train},
                                           "score": {"eval_examples": args.eval_examples, "chunk": args.chunk,
                                                     **score}}, "supernet")
    return dataclasses.replace(recall, retrofit=retrofit_config(args, scale), space=space)


def teacher_info(teacher: Any) -> dict[str, Any]:
    """What the result says about a `TeacherRun` (its training seconds are the cached entry's when loaded)."""
    return {"key": teacher.key, "cached": teacher.cached, "train_s": teacher.wall_s, "seed": teacher.seed,
            "levels": teacher.levels, "lm_loss": teacher.lm_loss}


def distinct_layouts(space: Any, n: int, seed: int = 1) -> list[tuple[Any, ...]]:
    """``n`` distinct layouts (layer specs) sampled from ``space`` as the supernet samples them."""
    import numpy as np

    from hyla.proxy_train.supernet.choices import SpaceSampler

    rng, sample, seen = np.random.default_rng(seed), SpaceSampler(space), {}
    for _ in range(100 * n):
        seen.setdefault(sample(rng), None)
        if len(seen) == n:
            break
    return list(seen)


def throughput(args: argparse.Namespace, out: dict[str, Any], records: Records, deadline: Deadline) -> None:
    from hyla.proxy_train.supernet.family import supernet_run
    from hyla.proxy_train.supernet.score import score_layouts
    from hyla.space.search_space import HeadwiseSpace, SearchSpace

    scale = args.throughput_scale
    space = SearchSpace(scale=scale, mixers=THROUGHPUT_KINDS, per_layer_mixer=True, placements=("free",),
                        n_attention=(0,), headwise=HeadwiseSpace(heads=(0, 1), per_layer=True))
    recall = supernet_recall(args, scale, space)
    t0 = time.perf_counter()
    run = supernet_run(recall, space.base_layout(["attn"] * space.depth), 0, log)
    setup_s = time.perf_counter() - t0
    layouts = distinct_layouts(space, args.layouts)
    with run.kernels():
        score_layouts(run.net, run.rows, layouts[: recall.score.chunk], recall.score)  # warm-up, not timed
        t0 = time.perf_counter()
        scores = score_layouts(run.net, run.rows, layouts, recall.score,
                               on_chunk=lambda n: log(f"throughput: {n}/{len(layouts)} scored"))
        wall = time.perf_counter() - t0
    recalls = [s["recall"] for s in scores]
    out["throughput"] = {
        "scale": scale, "space": space.to_dict(), "layouts": len(layouts), "score_wall_s": wall,
        "layouts_per_minute": 60 * len(layouts) / wall, "eval_rows": int(run.rows.inputs.shape[0]),
        "eval_tokens_per_layout": int(run.rows.inputs.numel()), "chunk": recall.score.chunk,
        "supernet": {k: run.info.get(k) for k in ("key", "cached", "train_s", "init_s", "curve")},
        "supernet_train": dataclasses.asdict(recall.train), "shared_train_s": run.info.get("shared"),
        "setup_wall_s": setup_s,
        "recall_spread": {"min": min(recalls), "median": statistics.median(recalls), "max": max(recalls)}}
    out["layouts_per_minute"] = out["throughput"]["layouts_per_minute"]
    out["supernet_train_s"] = run.info.get("train_s")
    log(f"throughput at {scale}: {out['layouts_per_minute']:.0f} layouts/min ({len(layouts)} in {wall:.1f} s)")


class Records:
    """Stand-alone runs appended to a JSONL as they finish; a run already there (same key) is not redone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = {r["key"]: r for r in (read_jsonl(path) if path.exists() else [])}

    def get(self, key: str, compute: Any) -> dict[str, Any]:
        if key not in self.done:
            record = {"key": key, **compute()}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps(record, default=str) + "\n")
            self.done[key] = record
        return self.done[key]


def standalone(records: Records, rf: Any, layout: Any, seed: int, deadline: Deadline) -> dict[str, Any] | None:
    """The stand-alone retrofit proxy of ``layout`` (one seed), from the records or run now (None past the cap)."""
    from hyla.proxy_train.retrofit.cache import content_key

    key = content_key({"family": "retrofit", "teacher": rf.teacher.key, "layout": layout.key(), "seed": seed,
                       "retrofit": dataclasses.asdict(rf.cfg)})
    if key not in records.done and deadline.expired():
        return None

    def compute() -> dict[str, Any]:
        res = rf.score_seed(layout, seed)
        log(f"stand-alone {layout.name} seed {seed}: recall {res['recall']:.3f} (before stage 2 "
            f"{res['before']['recall']:.3f}) in {res['wall_s']:.0f} s")
        return {"family": "retrofit", "layout": layout.name, "attention": list(layout.attention_layers),
                **{k: v for k, v in res.items() if k != "before"}, "before_recall": res["before"]["recall"]}

    return records.get(key, compute)


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard error (None without values / with one)."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def rank_agreement(inherited: dict[str, list[float]], other: dict[str, list[float]]) -> dict[str, Any]:
    """Spearman of the seed means over the layouts both have, and of each inherited seed alone (its spread)."""
    from hyla.analysis.calibrate import spearman

    both = [n for n in inherited if other.get(n)]
    ref = [statistics.fmean(other[n]) for n in both]
    per_seed = [spearman([inherited[n][s] for n in both], ref) for s in range(min(len(inherited[n]) for n in both))] \
        if both else []
    return {"rho": spearman([statistics.fmean(inherited[n]) for n in both], ref) if both else None,
            "layouts": len(both), "rho_per_supernet_seed": per_seed}


def seed_agreement(scores: dict[str, list[float]]) -> list[float | None]:
    """Spearman of seed 0's scores against each other seed's, over the layouts with both: the ceiling any
    other score's rank agreement with these can reach."""
    from hyla.analysis.calibrate import spearman

    seeds = min((len(v) for v in scores.values()), default=0)
    return [spearman([v[0] for v in scores.values()], [v[s] for v in scores.values()]) for s in range(1, seeds)]


def validity(args: argparse.Namespace, out: dict[str, Any], records: Records, deadline: Deadline) -> None:
    from hyla.proxy_train.retrofit.proxy import Retrofitter
    from hyla.proxy_train.supernet.family import calibration_space, supernet_run
    from hyla.proxy_train.supernet.score import score_layouts
    from hyla.space.presets import resolve_preset

    scale = args.validity_scale
    layouts = [resolve_preset(f"{name}@{scale}") for name in args.calibration]
    space = calibration_space(layouts)
    recall = supernet_recall(args, scale, space)
    inherited: dict[str, list[float]] = {lay.name: [] for lay in layouts}
    supernets = []
    for seed in range(args.supernet_seeds):
        run = supernet_run(recall, layouts[0], seed, log)
        with run.kernels():
            t0 = time.perf_counter()
            scores = score_layouts(run.net, run.rows, [lay.layers for lay in layouts], recall.score)
        supernets.append({**{k: run.info.get(k) for k in ("key", "cached", "train_s", "init_s", "curve")},
                          "score_s": time.perf_counter() - t0})
        for lay, s in zip(layouts, scores):
            inherited[lay.name].append(s["recall"])
    rf = Retrofitter(layouts[0], recall.retrofit, log)
    alone: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        for lay in layouts:
            rec = standalone(records, rf, lay, seed, deadline)
            if rec is not None:
                alone.setdefault(lay.name, []).append(rec["recall"])
    probe = probe_scores(args, layouts, records, deadline) if args.probe else {}
    vs_alone, vs_probe = rank_agreement(inherited, alone), rank_agreement(inherited, probe)
    out["validity"] = {
        "scale": scale, "space": space.to_dict(), "supernet_seeds": args.supernet_seeds, "standalone_seeds":
        args.seeds, "teacher": teacher_info(rf.teacher), "shared_train_s": dict(rf.shared),
        "retrofit": dataclasses.asdict(recall.retrofit), "supernet_train": dataclasses.asdict(recall.train),
        "supernets": supernets, "vs_standalone": vs_alone, "vs_probe": vs_probe,
        "standalone_vs_probe": rank_agreement(alone, probe) if alone else None,
        "standalone_seed_vs_seed": seed_agreement(alone),
        "per_layout": {n: {"inherited": inherited[n], "standalone": alone.get(n), "probe": probe.get(n)}
                       for n in inherited}}
    out["inherited_vs_standalone_spearman"] = vs_alone["rho"]
    out["inherited_vs_probe_spearman"] = vs_probe["rho"]
    log(f"validity at {scale}: Spearman inherited vs stand-alone retrofit {vs_alone['rho']} over "
        f"{vs_alone['layouts']} layouts (per supernet seed {vs_alone['rho_per_supernet_seed']}); vs the probe "
        f"{vs_probe['rho']} over {vs_probe['layouts']}")


def probe_scores(args: argparse.Namespace, layouts: list[Any], records: Records,
                 deadline: Deadline) -> dict[str, list[float]]:
    """The from-scratch recall probe (its recipe at the scale, ``--set probe.*``) per layout and seed."""
    import torch

    from hyla.config import from_mapping
    from hyla.proxy_train.probe.config import RecallProbeConfig
    from hyla.proxy_train.probe.runner import run_probe_seeds
    from hyla.proxy_train.retrofit.cache import content_key
    from hyla.proxy_train.retrofit.family import PROBE_DEFAULTS

    base = dict(PROBE_DEFAULTS.get(args.validity_scale, PROBE_DEFAULTS["small"]))
    base.update({k.partition(".")[2]: v for k, v in parse_sets(args.sets).items() if k.startswith("probe.")})
    cfg = from_mapping(RecallProbeConfig, base, "probe")
    out: dict[str, list[float]] = {}
    for lay in layouts:
        key = content_key({"family": "probe", "layout": lay.key(), "seeds": args.seeds, "probe": base})
        if key not in records.done and deadline.expired():
            continue
        rec = records.get(key, lambda lay=lay: {"family": "probe", "layout": lay.name, "recall": [
            p["recall"] for p in run_probe_seeds(lay, cfg, list(range(args.seeds)), None, torch.device(args.device),
                                                 False)]})
        out[lay.name] = rec["recall"]
    return out


def placement(args: argparse.Namespace, out: dict[str, Any], records: Records, deadline: Deadline) -> None:
    from hyla.proxy_train.retrofit.proxy import Retrofitter
    from hyla.proxy_train.retrofit.teacher import build_model
    from hyla.proxy_train.supernet.config import SupernetScore
    from hyla.proxy_train.supernet.placement import placed, placement_supernet, search_placement
    from hyla.proxy_train.supernet.score import eval_rows
    from hyla.space.layout import LayerSpec
    from hyla.space.presets import get_scale

    scale = args.placement_scale
    rcfg = retrofit_config(args, scale)
    base = get_scale(scale).layout(["attn"] * get_scale(scale).n_layers)
    rf = Retrofitter(base, rcfg, log)
    teacher, linear = rf.teacher.model, LayerSpec(mixer=args.placement_mixer)
    prev = hasattr(teacher, "prev_token_embedding")
    cfg = SupernetScore(eval_examples=args.eval_examples, chunk=args.chunk)
    rows = eval_rows(rf.data, teacher, cfg, rf.device)
    results: dict[str, Any] = {}
    for k in args.budgets:
        with rf._kernels():  # on CUDA the recipe's mixer kernels (torch: no Triton compilation)
            net, info, stage1 = placement_supernet(teacher, rf.teacher.key, rf.data, rcfg, linear, k,
                                                   args.supernet_steps, rf.device,
                                                   build=lambda lay: build_model(lay, prev), log=log)
            t0 = time.perf_counter()
            found = search_placement(net, rows, linear, k, cfg, args.beam, log=log)
            search_s = time.perf_counter() - t0
        trained: dict[str, Any] = {}
        for name in ("searched", "uniform"):
            attn = found["candidates"][name]["attention"]
            lay = base.with_layers(placed(base.n_layers, attn, linear), name=f"{linear.mixer}-at{attn}")
            runs = [standalone(records, rf, lay, seed, deadline) for seed in range(args.seeds)]
            vals = [r["recall"] for r in runs if r is not None]
            mean, sem = mean_sem(vals)
            trained[name] = {"attention": attn, "layout": lay.to_dict(), "recall": vals, "mean": mean, "sem": sem}
        s, u = trained["searched"], trained["uniform"]
        margin = 2 * math.sqrt(s["sem"] ** 2 + u["sem"] ** 2) if s["sem"] is not None and u["sem"] is not None \
            else None
        beats = bool(s["mean"] - u["mean"] > margin) if margin is not None else None
        results[str(k)] = {**found, "standalone": trained, "margin_2se": margin, "beats": beats,
                           "same_placement": s["attention"] == u["attention"], "search_s": search_s,
                           "supernet": {key: info.get(key) for key in ("key", "cached", "train_s", "init_s", "curve")},
                           "stage1_error_after": stage1.error_after}
        log(f"placement k={k}: searched {s['attention']} {s['mean']} ± {s['sem']} vs uniform {u['attention']} "
            f"{u['mean']} ± {u['sem']}: beats {beats}")
    out["placement"] = {"scale": scale, "n_layers": base.n_layers, "mixer": args.placement_mixer, "seeds": args.seeds,
                        "beam": args.beam, "teacher": teacher_info(rf.teacher), "shared_train_s": dict(rf.shared),
                        "retrofit": dataclasses.asdict(rcfg), "budgets": results}
    verdicts = [r["beats"] for r in results.values()]
    out["placement_beats_uniform"] = {**{k: r["beats"] for k, r in results.items()},
                                      "all": all(v is True for v in verdicts)}


PARTS = {"throughput": throughput, "validity": validity, "placement": placement}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--scale", default=None, help="shorthand for --throughput-scale")
    ap.add_argument("--throughput-scale", default="mini")
    ap.add_argument("--validity-scale", default="tiny")
    ap.add_argument("--placement-scale", default="tiny")
    ap.add_argument("--layouts", type=int, default=60, help="layouts scored for the throughput")
    ap.add_argument("--calibration", nargs="+", default=CALIBRATION, help="layout presets of the validity part")
    ap.add_argument("--mqar-levels", default=None, metavar="NAME:T:P1,P2:VOCAB",
                    help="register an MQAR-only level set NAME (use it with --set retrofit.levels=NAME)")
    ap.add_argument("--supernet-steps", type=int, default=300, help="supernet training steps")
    ap.add_argument("--eval-examples", type=int, default=16, help="held-out examples per level when scoring")
    ap.add_argument("--chunk", type=int, default=32, help="layouts per routed pass")
    ap.add_argument("--seeds", type=int, default=3, help="stand-alone (and probe) seeds")
    ap.add_argument("--supernet-seeds", type=int, default=2, help="supernets of the validity part")
    ap.add_argument("--budgets", type=int, nargs="+", default=[2, 4], help="attention layers to place")
    ap.add_argument("--placement-mixer", default="gdn")
    ap.add_argument("--beam", type=int, default=3)
    ap.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                    help="also score the calibration set with the from-scratch probe")
    ap.add_argument("--cache-dir", default=None, help="teachers, stage 1, supernets (default $HYLA_CACHE_DIR)")
    ap.add_argument("--records", default=None, help="stand-alone runs, JSONL (default: --out with .jsonl)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe overrides: retrofit.teacher.recall_steps=300, supernet.train.lr=3e-3, probe.steps=50")
    ap.add_argument("--max-seconds", type=float, default=0, help="no new stand-alone run starts after this (0: none)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=str(RESULTS_DIR / f"{NAME}.json"))
    args = ap.parse_args()
    if args.scale:
        args.throughput_scale = args.scale
    if args.mqar_levels:
        register_mqar_levels(args.mqar_levels)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    deadline = Deadline(args.max_seconds)
    records = Records(Path(args.records) if args.records else Path(args.out).with_suffix(".jsonl"))
    command = " ".join([Path(sys.executable).name, *sys.argv])
    for part in args.parts:
        t0, load, out = time.perf_counter(), os.getloadavg(), {"command": command, "machine": machine_info(args.device)}
        PARTS[part](args, out, records, deadline)
        out["runs"] = {part: {"command": command, "machine": out["machine"], "wall_s": time.perf_counter() - t0,
                              "load_average": [load, os.getloadavg()]}}
        # re-read: another command may have added its parts meanwhile
        merged = read_json(args.out) if Path(args.out).exists() else {"benchmark": NAME}
        write_json(args.out, {**merged, **out, "runs": {**merged.get("runs", {}), **out["runs"]}})
        log(f"{part} done in {out['runs'][part]['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
