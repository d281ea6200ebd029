"""Paper grid: score the paper's 31 layouts with the ``small`` proxy on one GPU, P processes at once, resumably.

Layouts come from ``hyla.space.presets.paper_grid(--scale)`` (6 mixers x {24:1, 12:1, 6:1, 3:1, pure} + the
Transformer) or ``--layouts``. P long-lived workers (the product's Ray actors, ``hyla.search.workers``, through
``common.run_jobs``; 1/P of the GPU each) take one layout at a time; every finished layout is appended to ``--jsonl`` at once, and layouts already there (same layout, same proxy config, status ok or
diverged) are skipped, so the grid can be split over several 10-minute commands. Near ``--max-seconds`` no new
layout is started when the slowest finished one would not fit; at the cap, running trials are stopped and simply
re-run next time. A worker that dies takes only its own layout down (recorded as failed, ``--retry-failed`` runs
it again); a fresh worker takes its place. ``--budget-tokens`` (or ``--steps``) shrinks the proxy. The summary JSON (``--out``) holds the
per-layout results (LM loss, recall, tokens/s, wall), summed trial seconds, the GPU wall of every session and the
findings below.

``--analyze`` only reads the JSONL and reports the study's qualitative findings (arXiv 2507.06457), each with the
numbers behind it and ``holds`` True/False (None when the records cannot tell):

1. ``recall_rises_with_attention``: Spearman rho between attention share and recall over the linear-mixer layouts
   (pure + hybrids), pooled and per mixer; holds if the pooled rho > 0 and most mixers have rho > 0.
2. ``lm_loss_flat_across_ratios``: per mixer, relative spread (max - min) / mean of the hybrids' LM loss; holds if
   the largest is <= ``--flat-tol`` (default 3 %); the recall spread is recorded next to it for contrast.
3. ``pure_recall_far_worse``: per mixer, pure recall vs the mean of its hybrids; holds if every mixer's hybrids
   beat its pure model and the pooled hybrid mean is >= ``--far-factor`` (default 1.5) x the pooled pure mean.
4. ``retnet_hgrn_hybrids_worst``: mixers ranked by mean hybrid recall; holds if RetNet and HGRN are the bottom two.

The analysis is pure Python (no numpy/scipy) and groups records by ``mixer`` (linear kind, ``transformer`` or
``mixed``) and ``attn_share`` (attention layers / depth; head-wise heads count pro rata), stored in each record.

    python benchmarks/bench_grid.py --p 4 --budget-tokens 4000000     # repeat until "grid complete"
    python benchmarks/bench_grid.py --analyze
    python benchmarks/bench_grid.py --device cpu --proxy tiny --steps 3 --layouts a.yaml b.yaml c.yaml --p 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (check_device, RESULTS_DIR, Deadline, add_common_args, close_workers, load_layouts, log,  # noqa: E402
                    machine_info, main_guard, parse_sets, proxy_config, read_json, run_jobs, setup_env,
                    start_workers, wait_ready, write_json)

NAME = "bench_grid"
WORST_EXPECTED = ("hgrn", "retnet")
#: training tokens/s of one 24 x 256 proxy per layer kind on an H100 (three packed, results/small_proxies_h100.json;
#: attention from ../shared/GPU.md): only the *order* matters, for scheduling the slowest layouts first
KIND_TOKENS_PER_S = {"mamba2": 34e3, "deltanet": 35e3, "gdn": 80e3, "hgrn2": 109e3, "retnet": 145e3, "gla": 168e3,
                     "hgrn": 244e3, "attn": 294e3}


def slowest_first(layouts: list[Any]) -> list[Any]:
    """Longest expected trial first (LPT scheduling: the last trials to finish are short ones, so the workers end
    together). A layout's cost is the mean per-token time of its layers' kinds; unknown kinds count as slowest."""
    slowest = min(KIND_TOKENS_PER_S.values())

    def cost(layout: Any) -> float:
        return sum(1.0 / KIND_TOKENS_PER_S.get(spec.mixer, slowest) for spec in layout.layers) / layout.n_layers

    return sorted(layouts, key=cost, reverse=True)  # stable: equal costs keep the given order


def layout_traits(layout: Any) -> dict[str, Any]:
    """``mixer``, ``attn_share``, ``n_attn``, ``n_layers`` of a hyla Layout (what the analysis groups by)."""
    kinds = {spec.mixer for spec in layout.layers if spec.mixer != "attn"}
    whole = sum(1 for spec in layout.layers if spec.mixer == "attn")
    heads = sum(spec.attn_heads / layout.num_heads for spec in layout.layers if spec.mixer != "attn")
    mixer = "transformer" if not kinds else (next(iter(kinds)) if len(kinds) == 1 else "mixed")
    return {"mixer": mixer, "attn_share": (whole + heads) / layout.n_layers, "n_attn": whole,
            "n_layers": layout.n_layers}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rho (``scipy.stats.spearmanr``: Pearson on average ranks, as ``hyla analysis calibrate``); None
    for fewer than 3 points or a constant side."""
    if len(xs) != len(ys) or len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _rel_spread(xs: list[float]) -> float | None:
    m = _mean(xs)
    return (max(xs) - min(xs)) / abs(m) if xs and len(xs) >= 2 and m else None


def analyze(records: list[dict[str, Any]], flat_tol: float = 0.03, far_factor: float = 1.5) -> dict[str, Any]:
    """The four findings (see the module docstring) from ``ok`` records with a recall and an LM loss."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("recall") is not None
          and r.get("lm_val_loss") is not None]
    by_mixer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        by_mixer[r["mixer"]].append(r)
    linear = {m: rs for m, rs in sorted(by_mixer.items()) if m not in ("transformer", "mixed")}
    hybrids = {m: [r for r in rs if 0 < r["attn_share"] < 1] for m, rs in linear.items()}
    pures = {m: [r for r in rs if r["attn_share"] == 0] for m, rs in linear.items()}
    out: dict[str, Any] = {"n_records": len(records), "n_ok": len(ok), "mixers": list(linear)}
    tr = by_mixer.get("transformer", [])
    out["transformer"] = {"recall": _mean([r["recall"] for r in tr]), "lm_val_loss": _mean([r["lm_val_loss"] for r in tr])}

    # 1. recall vs attention share
    pts = [(r["attn_share"], r["recall"]) for rs in linear.values() for r in rs]
    per = {m: spearman([r["attn_share"] for r in rs], [r["recall"] for r in rs]) for m, rs in linear.items()}
    pooled = spearman([p[0] for p in pts], [p[1] for p in pts])
    known = [v for v in per.values() if v is not None]
    out["recall_rises_with_attention"] = {
        "pooled_spearman": pooled, "n": len(pts), "per_mixer_spearman": per,
        "holds": None if pooled is None else bool(pooled > 0 and sum(v > 0 for v in known) > len(known) / 2)}

    # 2. LM loss nearly flat across ratios (hybrids only)
    lm = {m: _rel_spread([r["lm_val_loss"] for r in rs]) for m, rs in hybrids.items()}
    rc = {m: (max(r["recall"] for r in rs) - min(r["recall"] for r in rs)) if len(rs) >= 2 else None
          for m, rs in hybrids.items()}
    lm_known = [v for v in lm.values() if v is not None]
    out["lm_loss_flat_across_ratios"] = {
        "per_mixer_rel_spread": lm, "max_rel_spread": max(lm_known) if lm_known else None, "flat_tol": flat_tol,
        "per_mixer_recall_spread": rc,
        "holds": None if not lm_known else bool(max(lm_known) <= flat_tol)}

    # 3. pure linear recall vs hybrids
    per3: dict[str, Any] = {}
    for m in linear:
        p, h = _mean([r["recall"] for r in pures[m]]), _mean([r["recall"] for r in hybrids[m]])
        if p is not None and h is not None:
            per3[m] = {"pure": p, "hybrid_mean": h, "hybrids_better": h > p}
    pp, hh = _mean([v["pure"] for v in per3.values()]), _mean([v["hybrid_mean"] for v in per3.values()])
    factor = None if pp is None else (math.inf if pp == 0 and hh > 0 else (hh / pp if pp else None))
    out["pure_recall_far_worse"] = {
        "per_mixer": per3, "pooled_pure": pp, "pooled_hybrid": hh, "factor": factor, "far_factor": far_factor,
        "holds": None if not per3 or factor is None else bool(all(v["hybrids_better"] for v in per3.values())
                                                               and factor >= far_factor)}

    # 4. which mixers' hybrids recall worst
    means = {m: _mean([r["recall"] for r in rs]) for m, rs in hybrids.items() if rs}
    ranking = sorted(means, key=lambda m: means[m])
    decidable = len(ranking) >= 3 and all(m in means for m in WORST_EXPECTED)
    out["retnet_hgrn_hybrids_worst"] = {
        "ranking_worst_first": [[m, means[m]] for m in ranking],
        "holds": bool(set(ranking[:2]) == set(WORST_EXPECTED)) if decidable else None}
    return out


def format_findings(f: dict[str, Any]) -> str:
    """A short human-readable report of `analyze`'s output."""
    def num(x: Any) -> str:
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    a, b = f["recall_rises_with_attention"], f["lm_loss_flat_across_ratios"]
    c, d = f["pure_recall_far_worse"], f["retnet_hgrn_hybrids_worst"]
    lines = [
        f"records: {f['n_records']} ({f['n_ok']} ok); mixers: {', '.join(f['mixers']) or 'none'}; "
        f"transformer recall {num(f['transformer']['recall'])}",
        f"1. recall rises with attention share: {a['holds']} (pooled Spearman {num(a['pooled_spearman'])}, "
        f"n={a['n']}; per mixer " + ", ".join(f"{m} {num(v)}" for m, v in a["per_mixer_spearman"].items()) + ")",
        f"2. LM loss nearly flat across ratios: {b['holds']} (max relative spread {num(b['max_rel_spread'])} vs "
        f"tolerance {b['flat_tol']}; per mixer " + ", ".join(f"{m} {num(v)}" for m, v in
                                                            b["per_mixer_rel_spread"].items()) + ")",
        f"3. pure linear recall far worse than hybrids: {c['holds']} (pure {num(c['pooled_pure'])} vs hybrids "
        f"{num(c['pooled_hybrid'])}, factor {num(c['factor'])} vs {c['far_factor']})",
        f"4. RetNet/HGRN hybrids recall worst: {d['holds']} (worst first: "
        + ", ".join(f"{m} {num(v)}" for m, v in d["ranking_worst_first"]) + ")",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the grid run

def config_key(config: Any) -> str:
    """Short hash of the proxy config: records of another budget are never mixed with these."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of the JSONL (a torn last line from a killed command is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def latest_by_layout(records: list[dict[str, Any]], ckey: str | None) -> dict[str, dict[str, Any]]:
    """The last record per layout key for config ``ckey`` (None = the config with the most records)."""
    if ckey is None:
        counts: dict[str, int] = defaultdict(int)
        for r in records:
            counts[r.get("config_key", "")] += 1
        ckey = max(counts, key=counts.get) if counts else ""
    return {r["layout_key"]: r for r in records if r.get("config_key") == ckey}


def make_record(layout: Any, ckey: str, msg: tuple[str, int, Any, Any]) -> dict[str, Any]:
    """One JSONL line from a worker's message."""
    kind, wid, _, payload = msg
    rec: dict[str, Any] = {"layout_name": layout.name, "layout_key": layout.key(), "config_key": ckey,
                           **layout_traits(layout), "worker": wid, "time": time.time()}
    if kind == "error":
        return {**rec, "status": "failed", "fail_reason": payload["error"]}
    r = payload["result"]
    keep = ("status", "fail_reason", "lm_val_loss", "recall", "recall_tasks", "train_loss", "tokens_per_s",
            "wall_s", "steps", "tokens_seen", "params", "kv_bytes", "state_bytes", "peak_mem_bytes")
    first = payload["t_first_step"]
    return {**rec, **{k: r[k] for k in keep}, "first_step_s": None if first is None else first - payload["t_submit"]}


def write_summary(args: argparse.Namespace, layouts: list[Any], ckey: str, config: Any, session: dict[str, Any],
                  machine: dict[str, Any]) -> dict[str, Any]:
    """Rebuild the summary JSON from the JSONL (plus the sessions of earlier commands)."""
    done = latest_by_layout(read_jsonl(args.jsonl), ckey)
    rows = [done[lay.key()] for lay in layouts if lay.key() in done]
    old = read_json(args.out) or {}
    sessions = [s for s in old.get("sessions", []) if s.get("id") != session["id"]] + [session]
    summary = {"benchmark": NAME, "machine": machine, "config": config.to_dict(), "config_key": ckey,
               "jsonl": str(args.jsonl), "n_layouts": len(layouts), "n_done": len(rows),
               "complete": all(lay.key() in done and done[lay.key()]["status"] in ("ok", "diverged")
                               for lay in layouts),
               "trial_seconds": sum(r.get("wall_s") or 0.0 for r in rows),
               "gpu_seconds": sum(s["elapsed_s"] for s in sessions),  # one GPU held for every session's wall
               "sessions": sessions, "results": rows,
               "findings": analyze(rows, args.flat_tol, args.far_factor)}
    write_json(args.out, summary)
    return summary


def run_grid(args: argparse.Namespace) -> int:
    env = setup_env(args.triton_cache)
    check_device(args.device)
    from hyla.space.presets import paper_grid

    tokens = args.budget_tokens
    config = proxy_config(args.proxy, steps=args.steps, tokens=tokens, sets=parse_sets(args.sets))
    layouts = load_layouts(args.layouts, args.scale) if args.layouts else paper_grid(args.scale)
    layouts = layouts[: args.limit] if args.limit else layouts
    ckey = config_key(config)
    machine = machine_info(args.device)
    deadline = Deadline(args.max_seconds)
    session = {"id": f"{time.time():.0f}", "p": args.p, "env": env, "elapsed_s": 0.0, "finished": 0}
    done = latest_by_layout(read_jsonl(args.jsonl), ckey)
    redo = ("ok", "diverged") if args.retry_failed else ("ok", "diverged", "failed", "oom")
    todo = [lay for lay in layouts if not (lay.key() in done and done[lay.key()]["status"] in redo)]
    todo = slowest_first(todo) if args.order == "slowest-first" else todo
    log(f"{len(layouts)} layouts, {len(layouts) - len(todo)} done; {len(todo)} to run on {args.p} workers "
        f"({config.total_steps} steps each, config {ckey})")
    if args.plan:
        for lay in todo:
            print(f"  to run: {lay.name}", flush=True)
        return 0
    if not todo:
        write_summary(args, layouts, ckey, config, session, machine)
        log("grid complete")
        return 0
    Path(args.jsonl).parent.mkdir(parents=True, exist_ok=True)
    slowest = [0.0]  # longest finished trial: no trial starts that would not fit before the cap

    def finished(msg: tuple[str, int, Any, Any], job: dict[str, Any]) -> None:
        lay = job["layout"]
        rec = make_record(lay, ckey, msg)
        with open(args.jsonl, "a") as f:  # one writer (this process), one line per layout
            f.write(json.dumps(rec, default=str) + "\n")
        slowest[0] = max(slowest[0], time.time() - msg[3]["t_submit"] if msg[0] == "result" else 0.0)
        session["finished"] += 1
        session["elapsed_s"] = deadline.elapsed()
        write_summary(args, layouts, ckey, config, session, machine)
        log(f"w{msg[1]}: {lay.name} {rec['status']} lm {rec.get('lm_val_loss')} recall {rec.get('recall')} "
            f"({rec.get('wall_s') or 0:.0f} s)" + (f" {rec['fail_reason']}" if rec["status"] == "failed" else ""))

    pool = None
    try:
        pool = start_workers(min(args.p, len(todo)), args.device)
        if wait_ready(pool, deadline) is None:
            log("cap reached while workers started")
            return 0
        jobs = [{"id": lay.key(), "layout": lay, "config": config} for lay in todo]
        left = run_jobs(pool, jobs, deadline, finished, can_start=lambda: deadline.left() > slowest[0],
                        on_start=lambda slot, job: log(f"w{slot}: {job['layout'].name}"))
        if left and deadline.expired():
            log(f"cap reached with {len(left)} layouts unfinished (they run next time)")
        elif left:
            log(f"stopping: {len(left)} layouts left (none would finish before the cap)")
    finally:
        close_workers(pool)
        session["elapsed_s"] = deadline.elapsed()
        summary = write_summary(args, layouts, ckey, config, session, machine)
    log(f"wrote {args.out}: {summary['n_done']}/{summary['n_layouts']} layouts"
        + ("; grid complete" if summary["complete"] else "; run again to continue"))
    return 0


def run_analyze(args: argparse.Namespace) -> int:
    records = list(latest_by_layout(read_jsonl(args.jsonl), None).values())
    findings = analyze(records, args.flat_tol, args.far_factor)
    print(format_findings(findings), flush=True)
    out = Path(args.out).with_name(Path(args.out).stem + "_findings.json")
    write_json(out, {"benchmark": NAME, "jsonl": str(args.jsonl), "findings": findings})
    log(f"wrote {out}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, NAME)
    ap.add_argument("--jsonl", default=str(RESULTS_DIR / f"{NAME}.jsonl"), help="per-layout records (appended)")
    ap.add_argument("--scale", default="small", help="paper_grid scale (and default scale of --layouts)")
    ap.add_argument("--layouts", nargs="+", default=None, help="preset names / YAMLs instead of the paper grid")
    ap.add_argument("--limit", type=int, default=0, help="only the first N layouts (0 = all)")
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML")
    ap.add_argument("--budget-tokens", type=int, default=None, help="training tokens per layout (shrinks the proxy)")
    ap.add_argument("--steps", type=int, default=None, help="training steps per layout (instead of tokens)")
    ap.add_argument("--p", type=int, default=4, help="concurrent proxy processes on the GPU")
    ap.add_argument("--order", choices=("slowest-first", "given"), default="slowest-first",
                    help="trial order: expected-longest first (default; workers finish together) or as listed")
    ap.add_argument("--retry-failed", action="store_true", help="re-run layouts recorded as failed/oom")
    ap.add_argument("--analyze", action="store_true", help="only analyse the JSONL")
    ap.add_argument("--plan", action="store_true", help="only list the layouts still to run")
    ap.add_argument("--flat-tol", type=float, default=0.03, help="finding 2: max relative LM-loss spread")
    ap.add_argument("--far-factor", type=float, default=1.5, help="finding 3: hybrid/pure recall factor")
    args = ap.parse_args()
    from hyla.config import ConfigError

    if args.p < 1:
        raise ConfigError(f"--p: {args.p} is not allowed; expected >= 1 processes")
    if args.limit < 0:
        raise ConfigError(f"--limit: {args.limit} is not allowed; expected >= 0")
    return run_analyze(args) if args.analyze else run_grid(args)


if __name__ == "__main__":
    main_guard(main)
