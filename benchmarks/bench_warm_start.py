"""Warm start: how long after submission does a trial's first training step complete in a long-lived worker?

One of the product's Ray proxy workers (``hyla.search.workers``, as ``hyla search run`` uses them; ``--mode warm``,
the default) runs K proxy trials back to back: same shapes, different layouts of
the same mixer kind (default ``gla-6:1``, ``gla-3:1``, ``gla-12:1`` at ``small`` scale, short step budget). Trial 1
pays Triton compilation and autotuning; later trials reuse the process's compiled kernels (and the on-disk cache
under ``TRITON_CACHE_DIR``). Per trial we record the seconds from submission to the end of the first optimizer step
of the real ``run_proxy`` (``WorkerPool.submit_timed``, see ``common``), the whole trial wall and its result. Target:
trials >= 2 start within 5 s. ``--mode cold`` starts a fresh worker (a new actor, so a new process) per trial for
comparison (only the disk cache helps then). The worker's start-up imports torch and the proxy trainer, not fla:
trial 1 pays fla's import too.

The JSON is rewritten after every trial, so a run cut short by ``--max-seconds`` keeps what it measured.

    python benchmarks/bench_warm_start.py                                  # H100: 3 trials, 30 steps each
    python benchmarks/bench_warm_start.py --mode cold --out benchmarks/results/bench_warm_start_cold.json
    python benchmarks/bench_warm_start.py --device cpu --proxy tiny --steps 3 --layouts a.yaml b.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (check_device, Deadline, add_common_args, close_workers, load_layouts, log, machine_info,  # noqa: E402
                    main_guard, parse_sets, proxy_config, run_timed, setup_env, start_workers, wait_ready, write_json)

NAME = "bench_warm_start"
TARGET_S = 5.0  # trials after the first should reach their first completed step this fast


def trial_record(layout_name: str, msg: tuple[str, int, Any, Any]) -> dict[str, Any]:
    """One row of the report from a worker message (``result`` or ``error``)."""
    kind, wid, job_id, payload = msg
    if kind == "error":
        return {"layout": layout_name, "worker": wid, "status": "error", "error": payload["error"]}
    r = payload["result"]
    first = payload["t_first_step"]
    return {
        "layout": layout_name, "worker": wid, "pid": payload["pid"], "status": r["status"],
        "fail_reason": r["fail_reason"],
        # submission -> first optimizer step completed (None when the probe saw fewer than 2 steps)
        "first_step_s": None if first is None else first - payload["t_submit"],
        "queue_s": payload["t_recv"] - payload["t_submit"],
        "trial_wall_s": payload["t_end"] - payload["t_submit"], "tokens_per_s": r["tokens_per_s"],
        "steps": r["steps"], "lm_val_loss": r["lm_val_loss"], "recall": r["recall"],
        "peak_mem_bytes": r["peak_mem_bytes"], "probe": payload["probe"],
    }


def summarize(trials: list[dict[str, Any]], target_s: float = TARGET_S) -> dict[str, Any]:
    """First-trial vs later-trial start latency and whether the later ones meet the target."""
    firsts = [t.get("first_step_s") for t in trials]
    later = [f for f in firsts[1:] if f is not None]
    return {"trials": len(trials), "first_trial_start_s": firsts[0] if firsts else None,
            "later_max_start_s": max(later) if later else None,
            "later_mean_start_s": sum(later) / len(later) if later else None,
            "target_s": target_s,
            "meets_target": (len(later) == len(firsts) - 1 and len(later) > 0 and max(later) <= target_s)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, NAME)
    ap.add_argument("--layouts", nargs="+", default=["gla-6:1", "gla-3:1", "gla-12:1"],
                    help="preset names or layout YAMLs, run in this order (K = their number)")
    ap.add_argument("--scale", default="small", help="scale for preset names without @scale")
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML")
    ap.add_argument("--steps", type=int, default=30, help="steps per trial (short: we time the start)")
    ap.add_argument("--mode", choices=("warm", "cold"), default="warm",
                    help="warm: one worker runs every trial; cold: a fresh process per trial")
    args = ap.parse_args()
    env = setup_env(args.triton_cache)
    check_device(args.device)
    # evaluation is not what we time: keep it minimal unless the user overrides it
    config = proxy_config(args.proxy, steps=args.steps, sets=parse_sets(args.sets), quick=True)
    layouts = load_layouts(args.layouts, args.scale)
    deadline = Deadline(args.max_seconds)
    report: dict[str, Any] = {"benchmark": NAME, "machine": machine_info(args.device), "env": env,
                              "mode": args.mode, "config": config.to_dict(), "layouts": [lay.name for lay in layouts],
                              "workers": [], "trials": [], "complete": False}

    def save() -> None:
        report["summary"] = summarize(report["trials"])
        report["elapsed_s"] = deadline.elapsed()
        write_json(args.out, report)

    pool = None
    try:
        for i, lay in enumerate(layouts):
            if pool is None or args.mode == "cold":
                if pool is not None:
                    pool.shutdown()  # its process ends; Ray stays up
                pool = start_workers(1, args.device)
                ready = wait_ready(pool, deadline)
                if ready is None:
                    log("cap reached while the worker started")
                    break
                report["workers"].append({"ready_s": ready[0], **(pool.nodes[0] or {})})
                log(f"worker ready after {ready[0]:.1f} s (pid {pool.nodes[0]['pid']})")
            log(f"trial {i + 1}/{len(layouts)}: {lay.name} ({config.total_steps} steps)")
            msgs: list[tuple[str, int, Any, Any]] = []
            run_timed(pool, [{"id": f"t{i}", "layout": lay, "config": config}], deadline,
                     lambda msg, job, out=msgs: out.append(msg))
            if not msgs:
                log("cap reached during the trial; writing partial results")
                break
            rec = trial_record(lay.name, msgs[0])
            report["trials"].append(rec)
            log(f"  {rec['status']}: first step after {rec.get('first_step_s')} s, "
                f"trial {rec.get('trial_wall_s', float('nan')):.1f} s" + (f" ({rec['error']})" if "error" in rec else ""))
            save()
        else:
            report["complete"] = True
    finally:
        close_workers(pool)
        save()
    s = report["summary"]
    log(f"wrote {args.out}: first trial {s['first_trial_start_s']} s, later max {s['later_max_start_s']} s, "
        f"meets {TARGET_S:.0f} s target: {s['meets_target']}")
    return 0


if __name__ == "__main__":
    main_guard(main)
