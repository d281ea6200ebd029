"""Training throughput, MFU and peak memory at 340M (T 2048): hyla's kernel options one by one, and hyla beside fla's
and transformers' own models of the same shape, all in one process on one card.

Every measurement is `hyla train`'s step (`hyla.proxy_train.train.trainer.Trainer`: bf16 autocast, fused AdamW,
grad clip), ``--steps`` timed steps after ``--warmup`` untimed ones (compilation, autotuning), on a fresh model.
Targets (``--targets``, comma separated), each ``KIND:LAYOUT``:

    hyla:gla-6:1@340m       hyla train's model (`full_loop.build_model`) of the layout, under each ``--configs``
    fla:gla-pure@340m       fla's own ``*ForCausalLM`` of the layout (`hyla.analysis.export.fla_config`: the
                            model an export loads), its default fused kernels, its own ``forward(labels)``
    llama:transformer@340m  transformers' ``LlamaForCausalLM`` (sdpa) with the layout's shape

Configurations of hyla targets (``--configs``; fla and Llama run as they ship):

    eager        no fused kernels, no compile
    fused_loss   + fla's fused linear cross-entropy (no (B, T, vocab) logits)   [RunSpec.fused_loss]
    fuse_norm    + fla's fused RMSNorm (residual add inside)                      [RunSpec.fuse_norm]
    fuse_swiglu  + fla's fused SwiGLU + down projection                           [RunSpec.fuse_swiglu]
    fused        all three
    +tf32        TF32 for fp32 matrix products outside autocast (the fused loss's weight gradient) [RunSpec.tf32]
    compile      torch.compile of the plain-torch regions (block parts, head + loss) [RunSpec.compile]
    fused+compile, fused+mlp2x (recompute the MLP halves, 2x micro-batch), fused+ckpt2x (whole blocks, 2x),
    fused+compile+mlp2x

MFU uses `hyla.space.cost.flops_per_token` of the layout (fla's and Llama's models have its parameters, checked:
``params``). Results go to ``--out`` after every row (machine: GPU, torch/triton/fla versions, date), so a run cut
short keeps what it measured; ``--max-seconds`` caps the run (the rest is recorded skipped).

    python benchmarks/bench_340m.py --targets hyla:gla-6:1@340m --configs eager,fused,compile
    python benchmarks/bench_340m.py --targets hyla:gla-6:1@340m,fla:gla-pure@340m,llama:transformer@340m \\
        --configs eager
    python benchmarks/bench_340m.py --device cpu --seq-len 64 --batch 2 --steps 2 --warmup 1 \\
        --targets hyla:gla-6:1@tiny,llama:transformer@tiny --configs eager,fused   # smoke test
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

from hyla.cache_dirs import use_kernel_caches

use_kernel_caches()  # before fla loads: the kernels hyla train compiled on this machine (hyla.cache_dirs)

from hyla.proxy_train.train.full_loop import build_model, configure_torch  # noqa: E402  (what hyla train builds)
from hyla.proxy_train.train.full_spec import RunSpec, peak_flops  # noqa: E402
from hyla.proxy_train.train.trainer import MicroBatch, Trainer  # noqa: E402
from hyla.space.cost import flops_per_token  # noqa: E402
from hyla.space.presets import load_layout  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine_info, write_json  # noqa: E402  (shared benchmark helpers)

OUT = Path(__file__).resolve().parent / "results" / "bench_340m.json"
FUSED = {"fused_loss": True, "fuse_norm": True, "fuse_swiglu": True}
#: hyla configurations: RunSpec fields, plus ``batch_mult`` (micro-batch multiple)
CONFIGS: dict[str, dict[str, Any]] = {
    "eager": {},
    "fused_loss": {"fused_loss": True},
    "fuse_norm": {"fuse_norm": True},
    "fuse_swiglu": {"fuse_swiglu": True},
    "fused": FUSED,
    "fused_loss+tf32": {"fused_loss": True, "tf32": True},
    "fused+tf32": {**FUSED, "tf32": True},
    "compile": {"compile": True},
    "fused+compile": {**FUSED, "compile": True},
    "fused+mlp2x": {**FUSED, "gradient_checkpointing": "mlp", "batch_mult": 2},
    "fused+ckpt2x": {**FUSED, "gradient_checkpointing": True, "batch_mult": 2},
    "fused+compile+mlp2x": {**FUSED, "compile": True, "gradient_checkpointing": "mlp", "batch_mult": 2},
    "fused+tf32+compile": {**FUSED, "tf32": True, "compile": True},
}
KINDS = ("hyla", "fla", "llama")


class TimeCap(Exception):
    pass


def foreign_model(kind: str, layout: Any) -> torch.nn.Module:
    """fla's own model of ``layout`` (the config an export writes) or transformers' Llama of its shape."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if kind == "fla":
        import fla  # noqa: F401  (registers fla's model types with transformers)

        from hyla.analysis.export import fla_config

        cfg, why = fla_config(layout)
        if cfg is None:
            raise ValueError(f"fla has no model of {layout.name}: {why}")
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    if layout.linear_mixers or any(s.window or s.attn_heads for s in layout.layers):
        raise ValueError(f"llama: {layout.name} is not a plain Transformer")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=layout.d_model, intermediate_size=layout.mlp_hidden,
                      num_hidden_layers=layout.n_layers, num_attention_heads=layout.num_heads,
                      num_key_value_heads=layout.kv_heads, vocab_size=layout.vocab_size, rms_norm_eps=layout.norm_eps,
                      rope_theta=layout.rope_theta, tie_word_embeddings=False, max_position_embeddings=8192)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")


def bench_one(target: str, config: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """One row: ``target`` (``KIND:LAYOUT``) under ``config`` (hyla) or as it ships (fla, llama)."""
    kind, _, name = target.partition(":")
    layout = load_layout(name)
    cfg = dict(CONFIGS[config]) if kind == "hyla" else {}
    batch = args.batch * cfg.pop("batch_mult", 1)
    spec = RunSpec(layout=layout.to_dict(), scale="custom", tokens=10**9, seq_len=args.seq_len,
                   global_batch_tokens=args.seq_len * batch, micro_batch=batch, use_gpu=device.type == "cuda", **cfg)
    torch.manual_seed(0)
    configure_torch(spec)  # tf32 as the spec says (off for fla and Llama: their own defaults)
    if kind == "hyla":
        model = build_model(spec).to(device).train()
        opt = spec.make_optimizer(model.model, device)  # hyla train's optimizer (the spec's lr, betas, decay)
        params = model.model.num_params()

        def loss_fn(b: MicroBatch) -> torch.Tensor:
            return model(input_ids=b.inputs, shift_labels=b.targets).loss
    else:
        model = foreign_model(kind, layout).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=tuple(spec.betas),
                                weight_decay=spec.weight_decay, fused=device.type == "cuda")
        params = sum(p.numel() for p in model.parameters())
        flags = {k: v for k, v in vars(model.config).items() if k.startswith("fuse_")}  # fla's kernel switches
        flags["attn_implementation"] = getattr(model.config, "_attn_implementation", None)

        def loss_fn(b: MicroBatch) -> torch.Tensor:  # the model's own shifted loss over the same T tokens
            return model(input_ids=b.inputs, labels=b.inputs).loss
    rows = torch.randint(0, layout.vocab_size, (batch, args.seq_len + 1), device=device)
    micro = MicroBatch(rows[:, :-1], rows[:, 1:])
    # hyla train's step: bf16 autocast on CUDA, grad clip, fused AdamW; at the peak lr
    trainer = Trainer(model, opt, loss_fn, lambda s: spec.lr, device=device, bf16=device.type == "cuda",
                      grad_clip=spec.grad_clip)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    t0 = time.time()
    for i in range(args.warmup):
        loss = float(trainer.step(0, [micro]))
        log(f"  warm-up {i + 1}/{args.warmup}: loss {loss:.3f} ({time.time() - t0:.1f}s since start)")
    sync()
    warm_s = time.time() - t0
    times = []
    for i in range(args.steps):
        t1 = time.time()
        loss = float(trainer.step(0, [micro]))  # float(): the step's end on the device
        times.append(time.time() - t1)
    total = sum(times)
    tps = args.steps * batch * args.seq_len / total
    fpt = flops_per_token(layout, args.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    mean = total / len(times)
    sd = (sum((t - mean) ** 2 for t in times) / max(1, len(times) - 1)) ** 0.5
    return {"target": target, "config": config if kind == "hyla" else "as shipped", "status": "ok",
            "batch": batch, "seq_len": args.seq_len, "params": params, "hyla_params": _hyla_params(layout),
            "tokens_per_s": round(tps, 1), "step_s": round(mean, 4), "step_s_sd": round(sd, 4),
            "flops_per_token": fpt, "mfu": round(tps * fpt / peak, 4) if peak else None,
            "warmup_s": round(warm_s, 1), "final_loss": loss, "settings": CONFIGS[config] if kind == "hyla" else flags,
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda"
            else None}


def _hyla_params(layout: Any) -> int:
    from hyla.space.cost import param_count

    return param_count(layout).total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="hyla:gla-6:1@340m", help="comma-separated KIND:LAYOUT (kinds: "
                   f"{', '.join(KINDS)})")
    p.add_argument("--configs", default="eager,fused_loss,fuse_norm,fuse_swiglu,fused",
                   help=f"hyla configurations, subset of {', '.join(CONFIGS)}")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--batch", type=int, default=8, help="micro-batch (sequences)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-seconds", type=int, default=540, help="cap on the whole run (the rest is recorded skipped)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if bad := [c for c in configs if c not in CONFIGS]:
        p.error(f"--configs: unknown {bad}; allowed: {', '.join(CONFIGS)}")
    if bad := [t for t in targets if t.partition(":")[0] not in KINDS or not t.partition(":")[2]]:
        p.error(f"--targets: {bad} are not KIND:LAYOUT with KIND one of {', '.join(KINDS)}")

    def on_alarm(*_: Any) -> None:
        raise TimeCap(f"--max-seconds {args.max_seconds} reached")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(args.max_seconds)
    report: dict[str, Any] = {"machine": machine_info(str(device)), "args": {k: str(v) for k, v in vars(args).items()},
                              "results": []}
    capped = False
    for target in targets:
        for config in configs if target.startswith("hyla:") else ["as shipped"]:
            head = {"target": target, "config": config}
            if capped:
                row = {**head, "status": "skipped: time cap"}
            elif target.startswith("fla:") and device.type != "cuda":
                row = {**head, "status": "skipped: fla's models run Triton kernels (CUDA only)"}
            else:
                log(f"{target} / {config}")
                try:
                    row = bench_one(target, config, args, device)
                except TimeCap as e:
                    capped, row = True, {**head, "status": f"skipped: {e}"}
                except torch.OutOfMemoryError:
                    row = {**head, "status": "oom"}
                except Exception as e:  # noqa: BLE001 - one failing row must not lose the others
                    first = str(e).splitlines()[0][:300] if str(e) else ""
                    row = {**head, "status": f"failed: {type(e).__name__}: {first}"}
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                log(f"  -> {json.dumps(row)}")
            report["results"].append(row)
            write_json(args.out, report)
    signal.alarm(0)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
