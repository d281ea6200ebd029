"""Step time of one stacked recall probe (``probe.stack.ProbeStack``: R seeds/lrs of one layout as one vmapped
model, one CUDA graph) against the stack size R, alone on the device, through the product's own stack class.

For each layout and R: the build time (models, stacking, eager warm-up, capture), then the steady step time over
``--steps`` graph replays. ``--profile LAYOUT:R`` adds the top CUDA kernels of one step (torch.profiler) and
the kernel count per step. vmap batching-rule fallbacks (an op looped over the replicas) are listed per layout.

    python benchmarks/bench_stack_step.py --layouts gdn-3:1 transformer --stack 1 4 12 --steps 50 \\
        --profile gdn-3:1:12
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load_layouts, log, machine_info, main_guard, parse_sets, probe_config, setup_env, write_json


def compile_counters() -> dict[str, Any]:
    """torch.compile's counters so far in this process (graphs compiled, graph breaks, recompiles)."""
    from torch._dynamo.utils import counters

    return {k: {str(kk)[:200]: v for kk, v in counters[k].items()} for k in ("stats", "graph_break", "recompiles")
            if counters.get(k)}


def measure(layout: Any, probe: Any, r: int, steps: int, dev: Any, profile: bool) -> dict[str, Any]:
    """Build a stack of ``r`` replicas of ``layout`` and time ``steps`` steps (one check-free advance)."""
    import torch
    from hyla.proxy_train.model.mixers.common import kernel_path, scan_chunk
    from hyla.proxy_train.probe.levels import LevelPool
    from hyla.proxy_train.probe.stack import ProbeJob, ProbeStack

    pool = LevelPool(probe, layout.vocab_size, dev)
    jobs = [ProbeJob(layout, seed, probe.lrs[seed % len(probe.lrs)]) for seed in range(r)]
    torch._C._functorch._set_vmap_fallback_warning_enabled(True)
    with kernel_path(probe.kernels), scan_chunk(probe.scan_chunk), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        stack = ProbeStack(jobs, probe, pool, None, dev)
        torch.cuda.synchronize()
        build = time.perf_counter() - t0
        stack.advance(3)  # settle
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        stack.advance(steps)
        torch.cuda.synchronize()
        step_s = (time.perf_counter() - t0) / steps
        row: dict[str, Any] = {"layout": layout.name, "stack": r, "build_s": build, "step_ms": 1e3 * step_s,
                               "probe_steps_per_s": r / step_s, "cuda_graph": stack.graph is not None,
                               "capture_error": stack.capture_error, "compile": dict(compile_counters()),
                               "peak_mem_bytes": int(torch.cuda.max_memory_allocated(dev))}
        if profile:
            from torch.profiler import ProfilerActivity
            from torch.profiler import profile as prof

            graph, stack.graph = stack.graph, None  # one eager step: every kernel shows on its own
            with prof(activities=[ProfilerActivity.CUDA]) as p:
                stack.advance(1)
                torch.cuda.synchronize()
            stack.graph = graph
            events = [e for e in p.key_averages() if e.device_type.name == "CUDA"]
            events.sort(key=lambda e: -e.device_time_total)
            row["kernels_per_step"] = sum(e.count for e in events)
            row["top_kernels"] = [{"name": e.key[:120], "count": e.count, "us": round(e.device_time_total, 1)}
                                  for e in events[:25]]
    row["vmap_fallbacks"] = sorted({str(w.message)[:160] for w in caught if "batching rule" in str(w.message)})
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML whose recall is the probe")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--layouts", nargs="+", default=["transformer", "gdn-3:1", "gla-pure"])
    ap.add_argument("--stack", type=int, nargs="+", default=[1, 4, 12])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE over the probe's fields (recall:)")
    ap.add_argument("--profile", default=None, help="LAYOUT:R to profile (e.g. gdn-3:1:12)")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_stack_step.json"))
    args = ap.parse_args()
    env = setup_env()
    import dataclasses

    import torch
    from hyla.config import from_mapping
    from hyla.proxy_train.probe.config import RecallProbeConfig

    dev = torch.device("cuda")
    base = probe_config(args.proxy)
    probe = from_mapping(RecallProbeConfig, {**dataclasses.asdict(base), **parse_sets(args.set)}, "--set")
    prof_name, _, prof_r = (args.profile or "").rpartition(":")
    out: dict[str, Any] = {"benchmark": "bench_stack_step", "machine": machine_info("cuda"), "env": env,
                           "probe": dataclasses.asdict(probe), "runs": []}
    for layout, name in zip(load_layouts(args.layouts, args.scale), args.layouts):
        for r in args.stack:
            row = measure(layout, probe, r, args.steps, dev, profile=(name == prof_name and str(r) == prof_r))
            out["runs"].append(row)
            log(f"{name} R={r}: build {row['build_s']:.1f} s, step {row['step_ms']:.1f} ms, "
                f"{row['probe_steps_per_s']:.0f} probe-steps/s, graph {row['cuda_graph']}, "
                f"fallbacks {len(row['vmap_fallbacks'])}")
            write_json(args.out, out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
