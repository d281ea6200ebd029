"""Packing: aggregate training tokens/s of P concurrent proxies on one GPU (P = 1, 2, 4, 8), vs one proxy alone.

Small proxies are launch-bound (a few % MFU), so several processes sharing one GPU should
multiply the throughput. What is measured is the product's own packing: the proxy workers of ``hyla search run``
(``hyla.search.workers.WorkerPool``, Ray actors granted 1/max(P) of the GPU each, as a search with
``gpus_per_worker: 1/P`` packs them), started once by ``common.start_workers``. Every worker is warmed with a short
run of the same proxy (compilation and autotuning are per process); then for each P the measured proxy (fixed
steps) goes to P of the workers, and each run waits at a start barrier (`StartBarrier`, through the pool's
``before_first_step`` hook) once its data and model are built, so the P runs begin training together however
uneven their set-up was. Ray's own cost (submitting a trial, returning its result) falls outside the window below.

The aggregate is measured where all P runs train at once: from the per-step timestamps of each run
(``WorkerPool.submit_timed``) we take the window from the latest "end of step 0" to the earliest "start of the last step",
count the tokens of the steps inside it (a step cut by an edge pro rata), and divide by its length
(``overlap_tokens_per_s``).
Step 0 is excluded (first batch, lazy allocations). ``sum_tokens_per_s`` (the sum of each run's own training
throughput) is recorded too; it overstates packing when the runs do not overlap fully. Target: P >= 4 reaches
>= 3x the P = 1 figure.

Resumable: P values already measured in ``--out`` with the same layout and config are skipped (``--fresh`` redoes).

    python benchmarks/bench_packing.py                          # H100: gla-6:1@small, P = 1,2,4,8, 60 steps
    python benchmarks/bench_packing.py --device cpu --proxy tiny --ps 1,2 --steps 4 --layout lay.yaml
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (check_device, Deadline, add_common_args, close_workers, load_layouts, log, machine_info,  # noqa: E402
                    main_guard, parse_sets, proxy_config, read_json, run_timed, setup_env, start_workers, wait_ready,
                    write_json)

NAME = "bench_packing"
TARGET_SPEEDUP = 3.0


def overlap_throughput(step_starts: list[list[float]], tokens_per_step: int) -> dict[str, Any]:
    """Tokens/s over the window in which every run trains (see the module docstring).

    Args:
        step_starts: per run, the wall times at which steps 0, 1, ... began (run k's step i ends at
            ``step_starts[k][i + 1]``; the last step's end is unknown, so it is never counted).
        tokens_per_step: tokens of one optimizer step (batch_size x seq_len).
    """
    runs = [s for s in step_starts if len(s) >= 3]
    if not runs or len(runs) != len(step_starts):
        return {"window_s": None, "tokens": 0, "tokens_per_s": None, "note": "a run recorded fewer than 3 steps"}
    lo = max(s[1] for s in runs)  # every run has finished its step 0
    hi = min(s[-1] for s in runs)  # no run has finished (or begun its last step)
    if hi <= lo:
        return {"window_s": 0.0, "tokens": 0, "tokens_per_s": None, "note": "the runs did not overlap"}
    # a step cut by the window edge counts pro rata (its tokens assumed spread evenly over the step)
    steps = sum((min(b, hi) - max(a, lo)) / (b - a) for s in runs for a, b in zip(s[:-1], s[1:])
                if b > a and min(b, hi) > max(a, lo))
    return {"window_s": hi - lo, "tokens": steps * tokens_per_step,
            "tokens_per_s": steps * tokens_per_step / (hi - lo), "note": None}


class StartBarrier:
    """Holds the runs of one round at their step 0 until each of the ``parties`` has arrived or ended without
    arriving (a run that fails before the barrier no longer holds the others). A Ray actor (`_barrier`)."""

    def __init__(self, parties: int) -> None:
        self.parties, self.count = parties, 0
        self.event = asyncio.Event()

    async def arrive(self) -> None:
        self.count += 1
        if self.count >= self.parties:
            self.event.set()
        await self.event.wait()

    async def leave(self) -> None:
        self.count += 1
        if self.count >= self.parties:
            self.event.set()


def _barrier(parties: int) -> Any:
    import ray

    return ray.remote(num_cpus=0)(StartBarrier).remote(parties)


def _arrive(barrier: Any) -> None:
    """``before_first_step`` of a measured run (called in the worker)."""
    import ray

    ray.get(barrier.arrive.remote())


def measure_round(pool: Any, p: int, layout: Any, config: Any, deadline: Deadline) -> dict[str, Any]:
    """Run the proxy on ``p`` workers at once and collect them; the runs wait at the start barrier until every one
    of them has built its data and model, so their training steps begin together."""
    import ray

    if len(pool.ready_slots()) < p:  # a worker died in an earlier round: wait for its replacement
        wait_ready(pool, deadline)
    barrier = _barrier(p)
    jobs = [{"id": f"p{p}w{i}", "layout": layout, "config": config,
             "before_first_step": functools.partial(_arrive, barrier)} for i in range(p)]
    runs: dict[int, dict[str, Any]] = {}

    def finished(msg: tuple[str, int, Any, Any], job: dict[str, Any]) -> None:
        kind, slot, _, payload = msg
        runs[slot] = payload if kind == "result" else {"error": payload["error"]}
        if kind != "result" or not payload["step_starts"]:  # never reached the barrier
            barrier.leave.remote()

    run_timed(pool, jobs, deadline, finished)
    ray.kill(barrier)
    ok = [r for r in runs.values() if "result" in r and r["result"]["status"] == "ok"]
    rec: dict[str, Any] = {
        "p": p, "complete": len(ok) == p,
        "statuses": [r["result"]["status"] if "result" in r else r["error"] for r in runs.values()],
        "fail_reasons": [r["result"]["fail_reason"] for r in runs.values() if "result" in r
                         and r["result"]["fail_reason"]],
        "per_run_tokens_per_s": [r["result"]["tokens_per_s"] for r in ok],
        "sum_tokens_per_s": sum(r["result"]["tokens_per_s"] or 0.0 for r in ok) if ok else None,
        "peak_mem_bytes": [r["result"]["peak_mem_bytes"] for r in ok],
        "run_wall_s": [r["t_end"] - r["t_submit"] for r in ok],
    }
    overlap = overlap_throughput([r["step_starts"] for r in ok], config.batch_size * config.seq_len) \
        if len(ok) == p else {"tokens_per_s": None, "note": "not every run finished ok"}
    rec["overlap"] = overlap
    rec["overlap_tokens_per_s"] = overlap["tokens_per_s"]
    # runs that never trained at the same time measured nothing about packing: not complete, retried on resume
    rec["complete"] = rec["complete"] and overlap["tokens_per_s"] is not None
    return rec


def add_speedups(rounds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Speed-up of each P over P = 1 (overlap figures); whether the target is met for some P >= 4."""
    base = rounds.get("1", {}).get("overlap_tokens_per_s")
    best = None
    for key, rec in rounds.items():
        tps = rec.get("overlap_tokens_per_s")
        rec["speedup_vs_1"] = tps / base if (base and tps) else None
        if rec["speedup_vs_1"] is not None and (best is None or rec["speedup_vs_1"] > best[1]):
            best = (int(key), rec["speedup_vs_1"])
    return {"single_tokens_per_s": base, "best_p": best[0] if best else None,
            "best_speedup": best[1] if best else None, "target_speedup": TARGET_SPEEDUP,
            "meets_target": bool(best and best[1] >= TARGET_SPEEDUP)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, NAME)
    ap.add_argument("--layout", default="gla-6:1", help="preset name or layout YAML (default gla-6:1)")
    ap.add_argument("--scale", default="small", help="scale for a preset name without @scale")
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML")
    ap.add_argument("--ps", default="1,2,4,8", help="comma-separated process counts")
    ap.add_argument("--steps", type=int, default=60, help="measured steps per run")
    ap.add_argument("--warm-steps", type=int, default=3, help="steps of each worker's warm-up run (0 = none)")
    ap.add_argument("--fresh", action="store_true", help="ignore P values already in --out")
    args = ap.parse_args()
    env = setup_env(args.triton_cache)
    check_device(args.device)
    from hyla.config import ConfigError

    try:
        ps = sorted({int(x) for x in args.ps.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--ps: {args.ps!r} is not allowed; expected comma-separated integers, e.g. 1,2,4,8") from None
    if not ps or min(ps) < 1:
        raise ConfigError(f"--ps: {args.ps!r} is not allowed; expected positive process counts")
    if args.steps < 3:
        raise ConfigError(f"--steps: {args.steps} is not allowed; the overlap window needs >= 3 steps")
    config = proxy_config(args.proxy, steps=args.steps, sets=parse_sets(args.sets), quick=True)  # eval: not measured
    layout = load_layouts([args.layout], args.scale)[0]
    deadline = Deadline(args.max_seconds)
    # normalised through JSON so it compares equal to the copy read back from --out (tuples become lists)
    key = json.loads(json.dumps({"layout": layout.to_dict(), "config": config.to_dict(), "device": args.device},
                                default=str))
    old = None if args.fresh else read_json(args.out)
    rounds: dict[str, dict[str, Any]] = {}
    if old and old.get("key") == key:
        rounds = {k: v for k, v in old.get("rounds", {}).items() if v.get("complete")}
        log(f"resuming: P = {', '.join(rounds) or 'none'} already measured")
    report: dict[str, Any] = {"benchmark": NAME, "machine": machine_info(args.device), "env": env, "key": key,
                              "layout_name": layout.name, "tokens_per_step": config.batch_size * config.seq_len,
                              "rounds": rounds, "workers": [], "complete": False}

    def save() -> None:
        report["summary"] = add_speedups(report["rounds"])
        report["elapsed_s"] = deadline.elapsed()
        write_json(args.out, report)

    todo = [p for p in ps if str(p) not in rounds]
    if not todo:
        report["complete"] = True
        save()
        log(f"nothing to do; {args.out} already has P = {', '.join(rounds)}")
        return 0
    pool = None
    try:
        pool = start_workers(max(todo), args.device)
        ready = wait_ready(pool, deadline)
        if ready is None:
            log("cap reached while workers started")
            return 0
        report["workers"] = [{"ready_s": ready[i], **pool.nodes[i]} for i in sorted(ready)]
        log(f"{len(ready)} workers ready ({pool.num_gpus:g} GPU each)")
        if args.warm_steps > 0:
            warm = proxy_config(args.proxy, steps=args.warm_steps, sets=parse_sets(args.sets), quick=True)
            log(f"warming {len(ready)} workers ({args.warm_steps} steps each, concurrently)")
            round_ = measure_round(pool, len(ready), layout, warm, deadline)
            report["warmup"] = {"statuses": round_["statuses"], "wall_s": round_["run_wall_s"]}
            log(f"  warm-up walls: {[round(w, 1) for w in round_['run_wall_s']]} s")
        for p in todo:
            if deadline.expired():
                break
            log(f"P = {p}: {args.steps} steps each")
            rec = measure_round(pool, p, layout, config, deadline)
            if rec["complete"]:
                rounds[str(p)] = rec
            else:
                report.setdefault("incomplete", []).append(rec)
            log(f"  statuses {rec['statuses']}; overlap {rec['overlap_tokens_per_s']} tok/s, "
                f"sum {rec['sum_tokens_per_s']} tok/s")
            save()
        report["complete"] = all(str(p) in rounds for p in ps)
    finally:
        close_workers(pool)
        save()
    s = report["summary"]
    log(f"wrote {args.out}: single {s['single_tokens_per_s']} tok/s, best P={s['best_p']} x{s['best_speedup']}, "
        f"meets {TARGET_SPEEDUP:.0f}x target: {s['meets_target']}")
    return 0


if __name__ == "__main__":
    main_guard(main)
