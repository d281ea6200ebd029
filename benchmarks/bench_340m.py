"""Throughput and MFU of a 340M hybrid (default GLA 6:1, T=2048) under the settings that raise MFU.

Each configuration builds the model fresh, trains ``--steps`` timed steps of ``hyla train``'s step
(`hyla.proxy_train.train.trainer.Trainer`: bf16 autocast, fused AdamW, grad clip) after ``--warmup`` untimed ones, and
records tokens/s, MFU (FLOPs/token from ``hyla.space.cost.flops_per_token``, peak 989 TFLOP/s dense bf16 on
H100/H200) and peak memory. Configurations (``--configs``, comma separated):

    eager      micro-batch ``--batch``, plain cross-entropy on materialised logits
    fusedce    + ``fused_loss`` (fla's FusedLinearCrossEntropyLoss, no (B, T, 32000) logits tensor; CUDA only)
    compile    + torch.compile of the non-fla parts (SwiGLU MLPs, norms; in place)
    bigbatch   + 2x micro-batch (with --checkpointing: activation recomputation to make it fit)

Results go to ``benchmarks/results/bench_340m.json`` after every configuration (machine: GPU, torch/triton/fla
versions, date), so a run cut short keeps what it measured. ``--max-seconds`` caps the whole run with an alarm:
Triton autotuning of a cold process takes minutes (README, "GPU notes"); set ``TRITON_CACHE_DIR`` to reuse it.

    python benchmarks/bench_340m.py                       # on the GPU machine
    python benchmarks/bench_340m.py --layout gla-6:1@tiny --device cpu --seq-len 64 --steps 2   # smoke test
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hyla.proxy_train.train.full_spec import peak_flops
from hyla.proxy_train.train.full_loop import build_model  # the model hyla train builds
from hyla.proxy_train.train.trainer import MicroBatch, Trainer
from hyla.space.cost import flops_per_token
from hyla.space.presets import load_layout

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine_info  # noqa: E402  (shared benchmark helpers)

OUT = Path(__file__).resolve().parent / "results" / "bench_340m.json"


def bench_one(layout_name: str, cfg: dict[str, Any], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from hyla.proxy_train.train.full_spec import RunSpec

    layout = load_layout(layout_name)
    spec = RunSpec(layout=layout.to_dict(), scale="custom", tokens=10**9, seq_len=args.seq_len,
                   global_batch_tokens=args.seq_len * cfg["batch"], micro_batch=cfg["batch"],
                   compile=cfg["compile"], gradient_checkpointing=cfg["checkpointing"], fused_loss=cfg["fused_ce"],
                   use_gpu=device.type == "cuda")
    torch.manual_seed(0)
    model = build_model(spec).to(device).train()
    opt = spec.make_optimizer(model.model, device)  # hyla train's optimizer (the spec's lr, betas, decay)
    rows = torch.randint(0, layout.vocab_size, (cfg["batch"], args.seq_len + 1), device=device)
    batch = MicroBatch(rows[:, :-1], rows[:, 1:])
    # hyla train's step (its loss through the model's forward, bf16 autocast on CUDA, grad clip), at the peak lr
    trainer = Trainer(model, opt, lambda b: model(input_ids=b.inputs, shift_labels=b.targets).loss,
                      lambda s: spec.lr, device=device, bf16=device.type == "cuda", grad_clip=spec.grad_clip)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> float:
        return float(trainer.step(0, [batch]))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.time()
    for i in range(args.warmup):
        loss = step()
        log(f"  warm-up {i + 1}/{args.warmup}: loss {loss:.3f} ({time.time() - t0:.1f}s since start)")
    sync()
    warm_s = time.time() - t0
    t1 = time.time()
    for i in range(args.steps):
        loss = step()
        if (i + 1) % max(1, args.steps // 4) == 0:
            log(f"  step {i + 1}/{args.steps}: loss {loss:.3f}")
    sync()
    timed = time.time() - t1
    tps = args.steps * cfg["batch"] * args.seq_len / timed
    fpt = flops_per_token(layout, args.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    return {**cfg, "status": "ok", "layout": layout_name, "params": model.model.num_params(),
            "seq_len": args.seq_len, "tokens_per_s": round(tps, 1), "step_s": round(timed / args.steps, 4),
            "flops_per_token": fpt, "mfu": round(tps * fpt / peak, 4) if peak else None,
            "warmup_s": round(warm_s, 1), "final_loss": loss,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}


CONFIGS = {
    "eager": {"fused_ce": False, "compile": False, "checkpointing": False, "batch_mult": 1},
    "fusedce": {"fused_ce": True, "compile": False, "checkpointing": False, "batch_mult": 1},
    "compile": {"fused_ce": True, "compile": True, "checkpointing": False, "batch_mult": 1},
    "bigbatch": {"fused_ce": True, "compile": True, "checkpointing": None, "batch_mult": 2},
}


class TimeCap(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layout", default="gla-6:1@340m", help="preset name or layout YAML")
    p.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences) of the base configurations")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--configs", default="eager,fusedce,compile,bigbatch", help=f"subset of {', '.join(CONFIGS)}")
    p.add_argument("--compile", action="store_true", help="compile in every configuration")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing in every configuration")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=int, default=540, help="cap on the whole run (the rest is recorded skipped)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {unknown}; allowed: {', '.join(CONFIGS)}")

    def on_alarm(*_: Any) -> None:
        raise TimeCap(f"--max-seconds {args.max_seconds} reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    report: dict[str, Any] = {"machine": machine_info(str(device)), "args": {k: str(v) for k, v in vars(args).items()},
                              "results": []}
    capped = False
    for name in names:
        c = CONFIGS[name]
        cfg = {"config": name, "batch": args.batch * c["batch_mult"], "fused_ce": c["fused_ce"] and device.type == "cuda",
               "compile": c["compile"] or args.compile,
               "checkpointing": args.checkpointing if c["checkpointing"] is None else (c["checkpointing"] or args.checkpointing)}
        if capped:
            report["results"].append({**cfg, "status": "skipped: time cap"})
            continue
        log(f"config {name}: {cfg}")
        try:
            row = bench_one(args.layout, cfg, args, device)
        except TimeCap as e:
            capped, row = True, {**cfg, "status": f"skipped: {e}"}
        except torch.OutOfMemoryError:
            row = {**cfg, "status": "oom"}
        except Exception as e:  # noqa: BLE001 - one failing configuration must not lose the others
            row = {**cfg, "status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        log(f"  -> {json.dumps(row)}")
        report["results"].append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    signal.alarm(0)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
