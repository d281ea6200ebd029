"""Proxy fidelity: is the recall score reproducible, graded, on trend and stable across budgets?

Runs a set of layouts x seeds x budgets through the product's own proxy code, appending one JSONL record per
(layout, seed, budget, variant) as it finishes, so the run can be split over several 10-minute commands (records
already there are skipped). A probe-only proxy (``train_lm: false``, e.g. ``benchmarks/fidelity_gpu.yaml``) runs
in this process through ``hyla.proxy_train.probe.runner.run_probes``, every (layout, seed, lr) of a budget side
by side on the device (the probe's ``concurrent``); a proxy with an LM part runs ``run_proxy`` on ``--p`` of the
product's Ray workers (``hyla.search.workers``, through the search's own scheduler ``hyla.search.dispatch.drive``).
``--analyze [JSONL]`` (also run after every run) computes the fidelity checks of ``hyla.analysis.fidelity``
(reproducible, graded, trends, consistent across budgets, and the paper's four findings of
``hyla.analysis.findings`` with ``--flat-tol`` and ``--far-factor``) and records each session's wall time (the
calibration set's target: <= 15 min on one H200).

``--metric lm_val_loss`` runs the same checks on the LM proxy's loss, and ``between_variants`` gives the Spearman
rho between variants (e.g. two corpora) per budget: how far a ranking moves with the corpus.

Layout sets: ``calibration`` (the Transformer; gla, gdn, hgrn2 at pure, 24:1, 6:1, 3:1; deltanet, retnet and
hgrn pure), ``grid`` (the paper's 31 layouts) or preset names. ``--variant "NAME:KEY=VALUE;KEY=VALUE"`` runs an
ablation of the proxy (recall fields as ``recall.KEY``) under its own name; records carry the variant.
Within a budget and seed the expected-slowest layouts start first (``--order``), so the workers end together.
Finished jobs (``ok``, or ``diverged``, which a re-run would repeat) are skipped; failed ones run again.

    python benchmarks/bench_fidelity.py --proxy benchmarks/fidelity_gpu.yaml --layouts calibration --budgets 1 4
    python benchmarks/bench_fidelity.py --analyze
    python benchmarks/bench_fidelity.py --analyze benchmarks/results/fidelity_v2_cpu_tiny.jsonl   # issue 31's checks
    python benchmarks/bench_fidelity.py --proxy benchmarks/grid_proxy.yaml --layouts grid --seeds 0 --budgets 1 \
        --p 5 --jsonl benchmarks/results/grid.jsonl --out benchmarks/results/grid.json   # the paper grid (LM proxy)
    python benchmarks/bench_fidelity.py --device cpu --proxy tests_probe.yaml --layouts a.yaml b.yaml --p 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    Deadline,
    add_common_args,
    apply_sets,
    check_device,
    close_workers,
    config_key,
    load_layouts,
    log,
    machine_info,
    main_guard,
    parse_sets,
    proxy_config,
    read_json,
    read_jsonl,
    run_timed,
    setup_env,
    slowest_first,
    start_workers,
    wait_ready,
    write_json,
)
from hyla.analysis.fidelity import analyze, between_variants
from hyla.analysis.findings import decidable, format_findings, layout_traits

NAME = "bench_fidelity"
CALIBRATION = ["transformer"] + [f"{m}-{r}" for m in ("gla", "gdn", "hgrn2") for r in ("pure", "24:1", "6:1", "3:1")] \
    + ["deltanet-pure", "retnet-pure", "hgrn-pure"]


def resolve_layouts(names: list[str], scale: str) -> list[Any]:
    if names == ["calibration"]:
        names = CALIBRATION
    if names == ["grid"]:
        from hyla.space.presets import paper_grid

        return paper_grid(scale)
    return load_layouts(names, scale)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``name:key=value;key=value`` -> (name, overrides); ``recall.key`` sets a field of the recall family."""
    from hyla.config import ConfigError

    name, _, rest = text.partition(":")
    if not name:
        raise ConfigError(f"--variant: {text!r} has no name; expected NAME:KEY=VALUE;KEY=VALUE")
    return name, parse_sets([kv for kv in rest.split(";") if kv])


def variant_config(base: Any, overrides: dict[str, Any], seed: int, budget: int) -> Any:
    """The proxy of one job: ``base`` with the overrides, one seed, probe and LM steps x ``budget``."""
    from hyla.proxy_train.proxy.config import ProxyConfig

    data = apply_sets(base.to_dict(), overrides)
    recall = data.get("recall") or {}
    if recall.get("family") == "probe":
        data["recall"] = {**recall, "steps": int(recall["steps"]) * budget}
    if data.get("train_lm", True) and budget != 1:
        steps = ProxyConfig.from_dict(data).total_steps
        data["steps"], data["tokens"] = steps * budget, None
    data.update(seed=seed, seeds=1)
    return ProxyConfig.from_dict(data, where="bench_fidelity proxy")


def make_record(layout: Any, job: dict[str, Any], msg: tuple[str, int, Any, Any]) -> dict[str, Any]:
    from hyla.proxy_train.probe.config import RecallProbeConfig

    kind, wid, _, payload = msg
    rec = {"layout_name": layout.name, "layout_key": layout.key(), **layout_traits(layout), "seed": job["seed"],
           "budget": job["budget"], "variant": job["variant"], "config_key": job["ckey"], "worker": wid,
           "time": time.time()}
    if kind == "error":
        return {**rec, "status": "failed", "fail_reason": payload["error"]}
    r = payload["result"]
    probe = (r.get("probe") or [{}])[0]
    return {**rec, "status": r["status"], "fail_reason": r.get("fail_reason"), "recall": r.get("recall"),
            "recall_auc": probe.get("auc"), "recall_levels": r.get("recall_tasks"),
            "probe_budget": job["config"].recall.steps if isinstance(job["config"].recall, RecallProbeConfig) else None,
            "lm_val_loss": r.get("lm_val_loss"), "wall_s": r.get("wall_s"),
            "best_lr": probe.get("lr"), "probe_steps": [p["steps"] for p in probe.get("per_lr", [])],
            "curve": [p["curve"] for p in probe.get("per_lr", [])], "state_bytes": r.get("state_bytes")}


def run(args: argparse.Namespace) -> int:
    env = setup_env(args.triton_cache)
    check_device(args.device)
    base = proxy_config(args.proxy, sets=parse_sets(args.sets))
    variants = dict(parse_variant(v) for v in args.variant) or {"default": {}}
    layouts = resolve_layouts(args.layouts, args.scale)
    layouts = slowest_first(layouts) if args.order == "slowest-first" else layouts
    jobs = []
    for vname, over in variants.items():
        for budget in args.budgets:
            for seed in args.seeds:  # seed-major: a capped run leaves every layout with the same seeds
                for lay in layouts:
                    cfg = variant_config(base, over, seed, budget)
                    jobs.append({"layout": lay, "seed": seed, "budget": budget, "variant": vname, "config": cfg,
                                 "ckey": config_key(cfg)})
    done = {(r["layout_key"], r["config_key"]) for r in read_jsonl(args.jsonl) if r.get("status") in ("ok", "diverged")}
    todo = [j for j in jobs if (j["layout"].key(), j["ckey"]) not in done]
    todo.sort(key=lambda j: j["budget"])  # rung-0 budget first: a capped run still has every seed of it
    deadline = Deadline(args.max_seconds)
    session = {"id": f"{time.time():.0f}", "p": args.p, "env": env, "elapsed_s": 0.0, "finished": 0,
               "jobs": len(jobs), "todo": len(todo)}
    log(f"{len(jobs)} jobs ({len(layouts)} layouts x {len(args.seeds)} seeds x {len(args.budgets)} budgets x "
        f"{len(variants)} variants), {len(todo)} to run")
    Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
    if todo and not base.train_lm:
        run_in_process(args, todo, deadline, session)
    elif todo:
        run_pool(args, todo, deadline, session)
    session["elapsed_s"] = deadline.elapsed()
    write_summary(args, variants, session)
    return 0


def _append(path: str, rec: dict[str, Any], job: dict[str, Any], session: dict[str, Any], left: int) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec, default=str) + "\n")
    session["finished"] += 1
    log(f"{job['variant']} x{job['budget']} {job['layout'].name} seed {job['seed']}: {rec['status']} recall "
        f"{rec.get('recall')} lm {rec.get('lm_val_loss')} lr {rec.get('best_lr')} steps {rec.get('probe_steps')} "
        f"({rec.get('wall_s') or 0:.0f} s)  [{left} left]")


def run_in_process(args: argparse.Namespace, todo: list[dict[str, Any]], deadline: Deadline,
                   session: dict[str, Any]) -> None:
    """Probe-only proxies: every job of one (variant, budget) through the product's ``run_probes`` in this
    process, side by side on the device (the probe's ``concurrent`` at a time); a record per (layout, seed) as
    soon as all its learning rates are done. Past ``--max-seconds`` no new probe starts."""
    import torch
    from hyla.proxy_train.probe.levels import probe_levels
    from hyla.proxy_train.probe.runner import best_of_lrs, run_probes
    from hyla.proxy_train.probe.stack import ProbeJob
    from hyla.space.cost import inference_memory

    dev = torch.device(args.device)
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for job in todo:
        groups[(job["variant"], job["budget"])].append(job)
    left = [len(todo)]
    for (variant, budget), group in groups.items():
        cfg = group[0]["config"]
        probe = cfg.recall
        log(f"{variant} x{budget}: {len(group)} layout-seeds, {len(probe.lrs)} lr(s), {probe.steps} steps, "
            f"{probe.concurrent or 'all'} at a time, width {probe.width or 'own'}")
        pending: dict[int, list[dict[str, Any]]] = defaultdict(list)
        t_group = time.time()

        def done(pj: Any, result: dict[str, Any], group: list[dict[str, Any]] = group,
                 pending: dict[int, list[dict[str, Any]]] = pending, probe: Any = probe, t0: float = t_group,
                 cfg: Any = cfg) -> None:
            i = pj.key
            pending[i].append(result)
            if len(pending[i]) < len(probe.lrs):
                return
            job = group[i]
            left[0] -= 1
            try:
                best = best_of_lrs(pending[i], probe_levels(probe, job["layout"].vocab_size), time.time() - t0)
                payload = {"status": "ok", "recall": best["recall"], "recall_tasks": best["levels"],
                           "wall_s": max(r.get("wall_s") or 0.0 for r in pending[i]), "probe": [best],
                           "state_bytes": inference_memory(job["layout"], cfg.memory_context).total_bytes}
                rec = make_record(job["layout"], job, ("result", 0, None, {"result": payload}))
            except torch.OutOfMemoryError as e:
                rec = make_record(job["layout"], job, ("error", 0, None, {"error": f"oom: {e}"}))
            _append(args.jsonl, rec, job, session, left[0])

        pjobs = [ProbeJob(j["layout"], j["seed"], lr, i) for i, j in enumerate(group) for lr in probe.lrs]
        run_probes(pjobs, probe, dev, cfg.init_std, on_result=done, stop=deadline.expired, log=log)
        if deadline.expired():
            log(f"cap reached: {left[0]} jobs not started (they run next time)")
            break


def run_pool(args: argparse.Namespace, todo: list[dict[str, Any]], deadline: Deadline,
             session: dict[str, Any]) -> None:
    """Proxies with an LM part: ``run_proxy`` on ``--p`` of the product's Ray workers (``common.run_timed``); a
    worker that dies fails only its own job (a fresh worker takes its place)."""
    pool = None
    try:
        pool = start_workers(min(args.p, len(todo)), args.device)
        if wait_ready(pool, deadline) is None:
            log("cap reached while workers started")
            return
        log(f"workers ready after {deadline.elapsed():.0f} s")
        jobs = [{**job, "id": f"{job['layout'].key()}:{job['ckey']}"} for job in todo]
        left = [len(jobs)]

        def finished(msg: tuple[str, int, Any, Any], job: dict[str, Any]) -> None:
            left[0] -= 1
            _append(args.jsonl, make_record(job["layout"], job, msg), job, session, left[0])

        unfinished = run_timed(pool, jobs, deadline, finished)
        if unfinished:
            log(f"cap reached with {len(unfinished)} jobs unfinished (they run next time)")
    finally:
        close_workers(pool)


def backfill_auc(records: list[dict[str, Any]], args: argparse.Namespace, variants: dict[str, Any]) -> None:
    """``recall_auc`` for records written before it was recorded: from their curve, with the step budget of
    their variant's config (``--proxy`` plus the variant given again with ``--variant``)."""
    from hyla.proxy_train.probe.stack import curve_auc

    base = None
    for r in records:
        if r.get("recall_auc") is not None or not r.get("curve") or r.get("status") != "ok":
            continue
        if r.get("variant") in variants:  # records with a probe_budget also have their recall_auc
            base = base or proxy_config(args.proxy, sets=parse_sets(args.sets))
            total = variant_config(base, variants[r["variant"]], r["seed"], r["budget"]).recall.steps
            best = max(r["curve"], key=lambda c: c[-1][1])  # per lr; the best final score counts (best_of_lrs)
            r["recall_auc"] = curve_auc(best, total)


def write_summary(args: argparse.Namespace, variants: dict[str, Any], session: dict[str, Any] | None) -> None:
    records = read_jsonl(args.jsonl)
    backfill_auc(records, args, variants)
    old = read_json(args.out) or {}
    sessions = old.get("sessions", []) + ([session] if session else [])
    names = list(dict.fromkeys([*variants, *(r.get("variant") for r in records)]))
    machine = old["machine"] if session is None and old.get("machine") else machine_info(args.device)
    summary = {"benchmark": NAME, "machine": machine, "proxy": args.proxy,  # --analyze keeps the runs' machine
               "variants": {k: v for k, v in variants.items()}, "jsonl": str(args.jsonl), "sessions": sessions,
               "gpu_seconds": sum(s["elapsed_s"] for s in sessions),
               "metric": args.metric,
               "analysis": {v: analyze(records, v, args.budgets, args.metric, args.flat_tol, args.far_factor)
                            for v in names if v}}
    summary["between_variants"] = between_variants(summary["analysis"])
    write_json(args.out, summary)
    for v, a in summary["analysis"].items():
        for key, b in a.items():
            if key.startswith("budget"):
                log(f"{v} {key}: reproducible {b['reproducible']}, transformer easiest {b['transformer_easiest']}, "
                    f"trend {b['trend_spearman']}, pure spread {b['pure_linear_spread']} (noise {b['pure_noise_2sem']:.3f}),"
                    f" pure below hybrids {b['every_pure_below_its_hybrids']}")
                for n, t in sorted(b["layouts"].items(), key=lambda kv: -kv[1]["mean"]):
                    log(f"    {n:16s} {t['mean']:.3f} ± {t['sem'] or 0:.3f} (n {t['n']})")
                if decidable(b["paper_findings"]):
                    log(f"{v} {key} paper findings:\n" + format_findings(b["paper_findings"]))
        if "consistent" in a:
            log(f"{v} consistent: {a['consistent']}")
    for row in summary["between_variants"]:
        log(f"{row['variants'][0]} vs {row['variants'][1]} at {row['budget']}: Spearman {row['spearman']} (n {row['n']})")
    log(f"wrote {args.out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, NAME)
    ap.add_argument("--jsonl", default=str(RESULTS_DIR / f"{NAME}.jsonl"), help="per-job records (appended)")
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML (recall: the probe, or an LM proxy)")
    ap.add_argument("--scale", default="small", help="scale of preset layout names")
    ap.add_argument("--layouts", nargs="+", default=["calibration"], help="calibration, grid, or preset names/YAMLs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=[1, 4], help="step multipliers (rung 0 = 1)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE;KEY=VALUE (repeatable ablations)")
    ap.add_argument("--p", type=int, default=8, help="concurrent proxy processes on the GPU")
    ap.add_argument("--metric", default="recall", choices=("recall", "recall_auc", "lm_val_loss"),
                    help="score analysed (recall_auc: area under the probe's learning curve)")
    ap.add_argument("--order", choices=("slowest-first", "given"), default="slowest-first",
                    help="layout order within a seed: expected-longest first (default) or as listed")
    ap.add_argument("--flat-tol", type=float, default=0.03, help="paper finding 2: max relative LM-loss spread")
    ap.add_argument("--far-factor", type=float, default=1.5, help="paper finding 3: hybrid/pure recall factor")
    ap.add_argument("--analyze", nargs="?", const=True, default=False, metavar="FILE",
                    help="only analyse the records (of FILE when given, else of --jsonl); a fidelity_v2 records FILE "
                         "(its name says fidelity_v2) gets issue 31's checks per proxy family beside count-attn "
                         "(hyla.analysis.fidelity_v2)")
    args = ap.parse_args()
    if isinstance(args.analyze, str) and not Path(args.analyze).is_file():
        from hyla.config import ConfigError

        raise ConfigError(f"--analyze: {args.analyze}: file not found")
    if isinstance(args.analyze, str) and "fidelity_v2" in Path(args.analyze).name:
        return analyze_v2(args.analyze)
    if isinstance(args.analyze, str):
        args.jsonl = args.analyze
    if args.analyze:
        write_summary(args, dict(parse_variant(v) for v in args.variant), None)
        return 0
    return run(args)


def analyze_v2(path: str) -> int:
    """Print the fidelity v2 checks of a records file and write them beside it (``<stem>.analysis.json``)."""
    from hyla.analysis.fidelity_v2 import analyze as analyze_families
    from hyla.analysis.fidelity_v2 import format_report, read_records
    from hyla.config import ConfigError

    if not Path(path).is_file():
        raise ConfigError(f"--analyze: {path}: file not found")
    analysis = analyze_families(read_records(path))
    print(format_report(analysis), flush=True)
    out = write_json(Path(path).with_suffix(".analysis.json"), analysis)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
