"""Recall-probe speed on one device, through the product's ``run_probes``: how fast one probe trains, and how
much running several side by side (one CUDA graph and stream each) gains.

For each probe variant (``--variant NAME:KEY=VALUE;...`` over the proxy's probe, its ``recall:`` fields) and each concurrency
``--concurrent K``, one ``run_probes`` call trains K probes (the ``--layouts`` cycled, seeds 0, 1, ...) for
``--steps`` steps each without early stopping or checks, and reports probe-steps per second of wall time, graph
capture and warm-up included (a first call per variant warms the allocator and imports, untimed). The aggregate
rate over the single-probe rate is the packing gain.

    python benchmarks/bench_probe_speed.py --concurrent 1 8 16 --steps 100 \\
        --variant "c16:scan_chunk=16" --variant "c32:scan_chunk=32;batch_size=32"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load_layouts, log, machine_info, main_guard, parse_sets, probe_config, setup_env, write_json

LAYOUTS = ["transformer", "gla-pure", "gdn-pure", "hgrn2-pure", "deltanet-pure", "retnet-pure", "hgrn-pure",
           "gla-6:1"]


def time_call(layouts: list[Any], probe: Any, k: int, device: str) -> dict[str, Any]:
    """Wall time of one ``run_probes`` call with ``k`` probes (layouts cycled), each ``probe.steps`` steps."""
    import dataclasses

    import torch
    from hyla.proxy_train.probe.runner import run_probes
    from hyla.proxy_train.probe.stack import ProbeJob

    dev = torch.device(device)
    cfg = dataclasses.replace(probe, concurrent=k, eval_every=0, stop_at=1.0)
    jobs = [ProbeJob(layouts[i % len(layouts)], i // len(layouts), cfg.lrs[0]) for i in range(k)]
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    results = run_probes(jobs, cfg, dev)
    wall = time.perf_counter() - t0
    steps = sum(r["steps"] for r in results if r)
    return {"k": k, "layouts": [j.layout.name for j in jobs], "wall_s": wall, "probe_steps": steps,
            "probe_steps_per_s": steps / wall, "per_probe_wall_s": [r["wall_s"] for r in results if r],
            "cuda_graph": [r["cuda_graph"] for r in results if r],
            "peak_mem_bytes": int(torch.cuda.max_memory_allocated()) if dev.type == "cuda" else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proxy", default="small", help="proxy preset or YAML whose recall is the probe")
    ap.add_argument("--scale", default="small")
    ap.add_argument("--layouts", nargs="+", default=LAYOUTS)
    ap.add_argument("--concurrent", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE;... over the probe's fields")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_probe_speed.json"))
    args = ap.parse_args()
    env = setup_env()
    import dataclasses

    from hyla.config import from_mapping
    from hyla.proxy_train.probe.config import RecallProbeConfig

    base = probe_config(args.proxy)
    layouts = load_layouts(args.layouts, args.scale)
    out: dict[str, Any] = {"benchmark": "bench_probe_speed", "machine": machine_info(args.device), "env": env,
                           "steps": args.steps, "runs": []}
    variants = [v.partition(":") for v in args.variant] or [("default", ":", "")]
    for name, _, sets in variants:
        fields = {**dataclasses.asdict(base), **parse_sets([kv for kv in sets.split(";") if kv]), "steps": args.steps}
        probe = from_mapping(RecallProbeConfig, fields, "bench_probe_speed --variant")
        time_call(layouts[:1], dataclasses.replace(probe, steps=5), 1, args.device)  # imports, allocator
        for k in args.concurrent:
            row = {"variant": name, "probe": {k2: v for k2, v in fields.items() if v != getattr(base, k2, None)},
                   **time_call(layouts, probe, k, args.device)}
            out["runs"].append(row)
            log(f"{name} k={k}: {row['probe_steps_per_s']:.1f} probe-steps/s, wall {row['wall_s']:.1f} s, "
                f"peak {(row['peak_mem_bytes'] or 0) / 2**30:.1f} GiB, graphs {sum(row['cuda_graph'])}/{k}")
            write_json(args.out, out)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
