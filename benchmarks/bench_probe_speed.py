"""Recall-probe speed on one GPU: steps/s of the probe's training loop per mixer kind and execution mode.

For each layout (default: the ``small`` Transformer and every pure linear kind at 24 x 256) and each mode, one
process runs ``hyla.proxy_train.recall_probe.run_probe`` for ``--steps`` steps without early stopping and reports
the steady-state rate (the first ``--skip`` steps, which hold compilation and graph capture, are timed apart):

- ``torch+graph``: our PyTorch mixer path, the training step captured in a CUDA graph (the probe's default);
- ``torch``: the same path, eager;
- ``fla``: fla's Triton kernels, eager (a fresh process pays their compilation: minutes per kind).

    python benchmarks/bench_probe_speed.py --modes torch+graph torch --steps 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, load_layouts, log, machine_info, main_guard, setup_env, write_json  # noqa: E402

MODES = {"torch+graph": {"kernels": "torch", "cuda_graph": True}, "torch": {"kernels": "torch", "cuda_graph": False},
         "fla": {"kernels": "fla", "cuda_graph": False}}
LAYOUTS = ["transformer", "gla-pure", "gdn-pure", "hgrn2-pure", "deltanet-pure", "retnet-pure", "hgrn-pure",
           "gla-6:1"]


def time_probe(layout: Any, mode: str, steps: int, skip: int, device: str) -> dict[str, Any]:
    """Steady-state steps/s: a run of ``steps`` minus a run of ``skip`` (both after a 2-step warm-up run)."""
    import torch

    from hyla.proxy_train.proxy_config import ProxyConfig
    from hyla.proxy_train.recall_probe import RecallProbeConfig, run_probe

    probe = ProxyConfig.load("small").recall_probe.__dict__ | MODES[mode] | {"eval_every": 0, "eval_examples": 64}
    dev = torch.device(device)
    out: dict[str, Any] = {"layout": layout.name, "mode": mode}
    run_probe(layout, RecallProbeConfig(**{**probe, "steps": 2}), 0, 0.04, dev)  # imports, allocator, kernels
    for n, key in ((skip, "first"), (steps, "total")):
        cfg = RecallProbeConfig(**{**probe, "steps": n})
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = run_probe(layout, cfg, 0, 0.04, dev)
        out[f"{key}_s"] = time.perf_counter() - t0
        out["cuda_graph"] = r["per_lr"][0]["cuda_graph"]
    out["steps_per_s"] = (steps - skip) / max(1e-9, out["total_s"] - out["first_s"])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", nargs="+", default=LAYOUTS)
    ap.add_argument("--modes", nargs="+", default=["torch+graph", "torch"], choices=list(MODES))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10, help="steps timed apart (start-up, compilation, capture)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_probe_speed.json"))
    args = ap.parse_args()
    setup_env()
    rows = []
    record = {"benchmark": "bench_probe_speed", "machine": machine_info(args.device), "steps": args.steps,
              "skip": args.skip, "rows": rows}
    for lay in load_layouts(args.layouts, "small"):
        for mode in args.modes:
            try:
                row = time_probe(lay, mode, args.steps, args.skip, args.device)
            except Exception as e:  # noqa: BLE001 - one failing mode is a result, the rest still run
                row = {"layout": lay.name, "mode": mode, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(row)
            log(str({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}))
            write_json(args.out, record)
    return 0


if __name__ == "__main__":
    main_guard(main)
