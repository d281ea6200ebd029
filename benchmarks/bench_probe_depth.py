"""Does depth decide when a hybrid learns recall? The recall probe of the same layouts at several depths.

Runs the recall probe (the product's ``run_probes``; seeds and LRs of a layout stacked) on layouts built by the
product's presets at a chosen depth and width (``presets.hybrid`` / ``transformer`` on an ad hoc ``Scale``: the
paper's placement), so depth can be varied with everything else fixed. Small enough for a CPU. Why it exists and
what it measured: docs/recall-probe.md, docs/recall-probe-cpu.md.

    python benchmarks/bench_probe_depth.py --depths 8 24 --layouts transformer retnet-3:1 gla-3:1 \\
        --lrs 0.001 0.003 --steps 600 --zero-init none linear --device cpu
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, machine_info, main_guard, write_json


def build(name: str, depth: int, width: int, heads: int, vocab: int, options: dict[str, Any] | None = None) -> Any:
    """``transformer``, ``MIXER-pure``, ``MIXER-R:1`` (the presets' placement) or ``MIXER-atI,J,...`` (attention
    at those layer indices) at ``depth`` x ``width``; ``options`` override every linear layer's mixer options."""
    from hyla.space.layout import LayerSpec
    from hyla.space.presets import Scale, attention_at, hybrid, transformer

    scale = Scale(f"d{depth}w{width}", depth, width, heads, 2 * width, vocab)
    if name == "transformer":
        return transformer(scale)
    if "-at" in name:
        mixer, _, indices = name.partition("-at")
        layout = attention_at(hybrid(mixer, None, scale), [int(i) for i in indices.split(",")], name=name)
    else:
        mixer, _, ratio = name.partition("-")
        layout = hybrid(mixer, None if ratio == "pure" else int(ratio.split(":")[0]), scale)
    if not options:
        return layout
    return layout.with_layers([spec if spec.is_attention else LayerSpec(
        mixer=spec.mixer, attn_heads=spec.attn_heads, window=spec.window, options={**spec.option_dict(), **options})
        for spec in layout.layers], name=f"{name} {options}")


def _option(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    return key, yaml.safe_load(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", type=int, nargs="+", default=[8, 24])
    ap.add_argument("--layouts", nargs="+", default=["transformer", "retnet-3:1", "gla-3:1"])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--pairs", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--curriculum", type=float, default=0.25, help="the probe's curriculum")
    ap.add_argument("--task-vocab", type=int, default=None, help="the probe's task_vocab (None: 4 x the largest pairs)")
    ap.add_argument("--zero-init", nargs="+", default=["none"], choices=("none", "linear", "all"),
                    help="the probe's zero_init values to compare")
    ap.add_argument("--mixer-option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                    help="override a mixer option of every linear layer (e.g. expand_ratio=16), repeatable")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(RESULTS_DIR / "bench_probe_depth.json"))
    args = ap.parse_args()
    import torch
    from hyla.proxy_train.probe.runner import run_probes
    from hyla.proxy_train.probe.stack import ProbeJob
    from hyla.proxy_train.probe.config import RecallProbeConfig

    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    import dataclasses

    base = RecallProbeConfig(seq_len=args.seq_len, pairs=tuple(args.pairs), steps=args.steps,
                             batch_size=args.batch_size, lrs=tuple(args.lrs), eval_every=50, eval_examples=128,
                             pool_rows=4096, warmup=20, curriculum=args.curriculum,
                             task_vocab=args.task_vocab)
    out: dict[str, Any] = {"benchmark": "bench_probe_depth", "machine": machine_info(args.device),
                           "probe": {k: getattr(base, k) for k in ("seq_len", "pairs", "steps", "batch_size", "lrs",
                                                                  "curriculum", "warmup", "prev_token", "task_vocab")},
                           "width": args.width, "mixer_options": dict(args.mixer_option), "runs": []}
    t0 = time.time()
    for depth in args.depths:
        for zero_init in args.zero_init:
            cfg = dataclasses.replace(base, zero_init=zero_init)
            layouts = {name: build(name, depth, args.width, args.heads, args.vocab, dict(args.mixer_option))
                       for name in args.layouts}
            jobs = [ProbeJob(lay, seed, lr, (name, depth, zero_init)) for name, lay in layouts.items()
                    for seed in args.seeds for lr in args.lrs]

            def done(job: ProbeJob, r: dict[str, Any]) -> None:
                name, d, zi = job.key
                row = {"layout": name, "depth": d, "zero_init": zi, "seed": job.seed, "lr": job.lr,
                       "score": r["score"], "levels": r["levels"], "steps": r["steps"], "curve": r["curve"],
                       "elapsed_s": time.time() - t0}
                out["runs"].append(row)
                write_json(args.out, out)
                log(f"depth {d} zero_init {zi} {name} seed {job.seed} lr {job.lr:g}: {r['score']:.3f} "
                    f"{[round(x, 2) for x in r['levels']]} steps {r['steps']}")

            run_probes(jobs, cfg, torch.device(args.device), None, on_result=done, log=log)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
