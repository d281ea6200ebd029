"""Does the recall score rank layouts? Train a few layouts with one proxy recipe, several seeds, and compare recall.

CPU default (``python benchmarks/bench_recall.py``): shallow 4-layer x d_model 64 layouts (pure GLA, GLA 3:1,
GLA 1:1, pure attention, and RetNet 1:1) trained with the recipe of
``tests/proxy_train/proxy/test_run_proxy.py::test_attention_learns_mqar_and_linear_ranks_lower``: MQAR at T = 32
with 4 and 8 pairs (16 keys, 16 values) as 24 of 32 rows, LM text in the rest, 450 steps at a constant lr 1e-3,
width-scaled init.
The study (arXiv 2507.06457) found recall rising with the attention share and pure linear models recalling worst.

What it measured (CPU, with the ablations of the recipe): docs/proxy-recipe.md.

GPU check of a preset (``--proxy small --layouts transformer gla-6:1 gla-pure --tokens 12000000 --device cuda``):
the same comparison with a proxy preset and preset layouts; ``--set key=value`` overrides proxy fields (e.g.
``--set init_std=0.02 --set decay_fraction=1.0`` for the old recipe). Runs are sequential, in this process.

Writes ``benchmarks/results/<--out>.json``: machine, recipe, per run (layout, seed, recall per level, LM val loss,
wall) and a summary per layout (mean and min/max over seeds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, apply_sets, log, machine_info, parse_sets, setup_env, write_json  # noqa: E402

#: name -> layer strings of the CPU layouts (4 layers; "r:1" = r linear layers then one attention layer).
CPU_LAYOUTS: dict[str, tuple[str, ...]] = {
    "gla-pure": ("gla", "gla", "gla", "gla"),
    "gla-3:1": ("gla", "gla", "gla", "attn"),
    "gla-1:1": ("gla", "attn", "gla", "attn"),
    "transformer": ("attn", "attn", "attn", "attn"),
    "retnet-1:1": ("retnet", "attn", "retnet", "attn"),
}

#: The CPU recipe (the slow MQAR test's, on 4 layers).
CPU_RECIPE: dict[str, Any] = {
    "seq_len": 32, "batch_size": 32, "steps": 450, "lr": 1e-3, "warmup": 10, "min_lr_ratio": 1.0,
    "weight_decay": 0.0, "text": {"source": "stdlib", "max_docs": 30},
    "recall": {"family": "suite", "mix": 0.75, "eval_examples": 128,
               "tasks": [{"task": "mqar", "seq_len": 32, "params": {"num_kv_pairs": p, "task_vocab": 32}} for p in (4, 8)]},
    "eval_batches": 2, "eval_batch_size": 32, "device": "cpu",
}


def cpu_layout(name: str) -> Any:
    from hyla.space.layout import Layout

    return Layout(layers=CPU_LAYOUTS[name], d_model=64, vocab_size=512, mlp_hidden=128, num_heads=2, name=name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layouts", nargs="+", default=list(CPU_LAYOUTS),
                    help=f"CPU layout names ({', '.join(CPU_LAYOUTS)}) or, with --proxy, preset names")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--proxy", default=None, help="proxy preset/YAML instead of the CPU recipe")
    ap.add_argument("--scale", default="small", help="scale of preset layouts (with --proxy)")
    ap.add_argument("--tokens", type=int, default=None, help="token budget (with --proxy)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a proxy field")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--out", default="bench_recall_cpu", help="result name under benchmarks/results/ (or a path)")
    args = ap.parse_args()
    setup_env()
    import torch

    torch.set_num_threads(args.threads)
    from hyla.proxy_train.proxy.config import ProxyConfig
    from hyla.proxy_train.proxy.run import run_proxy

    sets = parse_sets(args.set)
    if args.proxy is None:
        base = {**apply_sets(CPU_RECIPE, sets), "device": args.device}
        layouts = [cpu_layout(n) for n in args.layouts]
    else:
        from common import load_layouts, proxy_config

        base = {**proxy_config(args.proxy, tokens=args.tokens, sets=sets).to_dict(), "device": args.device}
        layouts = load_layouts(args.layouts, args.scale)
    out = Path(args.out) if args.out.endswith(".json") else RESULTS_DIR / f"{args.out}.json"
    record: dict[str, Any] = {"benchmark": "bench_recall", "machine": machine_info(args.device),
                              "recipe": ProxyConfig.from_dict({**base, "seed": 0}).to_dict(), "runs": [],
                              "summary": {}}
    t0 = time.perf_counter()
    for layout in layouts:
        for seed in args.seeds:
            r = run_proxy(layout, ProxyConfig.from_dict({**base, "seed": seed}), progress=False)
            record["runs"].append({"layout": layout.name, "layers": layout.to_dict()["layers"],
                                   "seed": seed, "status": r.status, "recall": r.recall,
                                   "recall_tasks": r.recall_tasks, "lm_val_loss": r.lm_val_loss,
                                   "params": r.params, "wall_s": round(r.wall_s, 1)})
            log(f"{layout.name} seed {seed}: {r.status} recall {r.recall} {r.recall_tasks} "
                f"lm {r.lm_val_loss} ({r.wall_s:.0f} s)")
            write_json(out, record)  # partial results survive an interrupted run
    for name in dict.fromkeys(run["layout"] for run in record["runs"]):
        rec = [run["recall"] for run in record["runs"] if run["layout"] == name and run["recall"] is not None]
        lm = [run["lm_val_loss"] for run in record["runs"] if run["layout"] == name and run["lm_val_loss"] is not None]
        if rec:
            record["summary"][name] = {"recall_mean": statistics.mean(rec), "recall_min": min(rec),
                                       "recall_max": max(rec), "lm_val_loss_mean": statistics.mean(lm) if lm else None}
    record["total_s"] = round(time.perf_counter() - t0, 1)
    write_json(out, record)
    log(f"wrote {out} ({record['total_s']} s)")
    for name, s in record["summary"].items():
        log(f"  {name:12s} recall {s['recall_mean']:.3f} [{s['recall_min']:.3f}, {s['recall_max']:.3f}]  "
            f"lm {s['lm_val_loss_mean']:.3f}")


if __name__ == "__main__":
    main()
