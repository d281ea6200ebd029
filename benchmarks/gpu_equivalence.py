"""GPU check of every token mixer: fla's Triton path against hyla's pure-PyTorch path, then training throughput.

Part 1, equivalence (one layer at the ``small`` scale, d_model 256): for every kind in
``hyla.proxy_train.model.mixers.MIXER_NAMES`` (7 linear kinds + ``attn``), the short-conv variants of GLA/HGRN/HGRN-2,
and one head-wise layer (``gla+a2``), build the module on CUDA and a weight-identical copy that runs the reference
path (the linear mixers' ``_cpu_forward`` on the same CUDA tensors; modules without one, attention and head-wise,
run the copy on the CPU). Compared, as max |a - b| / max |b| per tensor: the output, the input gradient, every
parameter gradient (the worst is reported), the decode state after a prefill (``use_cache=True``) and the
output of one decode step from that state. Each in fp32 and in bf16 autocast (fp32 weights, as in training); the
reference is always fp32. Pass: bf16 <= max(1e-2, 2 x the error of the reference path itself under bf16 autocast)
(``--tol-bf16``): bf16 rounding alone gives normwise gradient errors near 1e-2. Kernels that refuse fp32 (DeltaNet's
chunk kernel) are recorded as errors of that dtype, not fatal.

fp32 is not exact fp32 in fla: Triton's ``tl.dot`` on fp32 inputs defaults to TF32 (10-bit mantissa) on GPUs with
tensor cores, and fla's kernels leave that default. So with ``--f32-precision tf32`` (the default, what fla users
get) an fp32 case passes at <= max(1e-3, 2 x the error of the reference path itself with TF32 matmuls,
``tf32_floor``); with ``--f32-precision ieee`` Triton is made to compute fp32 dots in full fp32
(``TRITON_F32_DEFAULT=ieee``, set before any kernel compiles) and the plain ``--tol-fp32`` (1e-3) applies: a
case that passes there has the same math as the reference, not just similar numerics. The WY/triangular-solve
kernels of the delta rules amplify TF32 rounding most, and parameter gradients that sum over every token
(``A_log``, ``dt_bias``) more than per-token outputs. ``--forward-only`` skips the backward (GatedDeltaNet's
backward needs tilelang on Hopper with triton < 3.7.1: README, "GPU notes").

Part 2, throughput: forward+backward tokens/s of the 24 x 256 ``small`` preset per mixer
(``<kind>-pure@small``, ``transformer@small``, and 24 head-wise ``gla+a2`` layers) at T=1024 under bf16
autocast, plus the time of the warm-up steps (Triton autotuning/compilation dominates a cold process, README
"GPU notes": set ``TRITON_CACHE_DIR``) and peak memory.

Every case is wrapped in try/except, and ``benchmarks/results/gpu_equivalence.json`` (machine: GPU name,
torch/triton/fla versions, date) is rewritten after each case, so a run cut short by ``--max-seconds`` keeps what it
measured.

    python benchmarks/gpu_equivalence.py                                   # on the GPU machine
    python benchmarks/gpu_equivalence.py --kinds gla,gdn --skip-timing     # a subset
    python benchmarks/gpu_equivalence.py --device cpu --scale tiny --seq-len 32 --timing-seq-len 32 --steps 1
                                                                            # CPU smoke test of the script itself
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from hyla.proxy_train.model.mixers import MIXER_NAMES, build_mixer
from hyla.proxy_train.model.lm import HylaLM
from hyla.space.layout import Layout
from hyla.space.presets import get_scale, resolve_preset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine_info  # noqa: E402  (shared benchmark helpers)

OUT = Path(__file__).resolve().parent / "results" / "gpu_equivalence.json"
HEADWISE = "gla+a2"
#: extra equivalence cases beyond the defaults: the short-conv code paths that the default options leave off
CONV_VARIANTS = {"gla:conv": "gla", "hgrn:conv": "hgrn", "hgrn2:conv": "hgrn2"}


class BudgetExceeded(Exception):
    """Raised by the alarm when ``--max-seconds`` is over."""





def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (normwise: elementwise ratios blow up on entries near zero)."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def layer_layout(case: str, scale: str) -> Layout:
    """A one-layer layout at ``scale`` for an equivalence case name."""
    s = get_scale(scale)
    if case in CONV_VARIANTS:
        return s.layout([{"mixer": CONV_VARIANTS[case], "options": {"use_short_conv": True}}], name=case)
    return s.layout([case], name=case)


def _run(module: torch.nn.Module, x: torch.Tensor, reference: bool, state: dict | None = None,
         use_cache: bool = False) -> tuple[torch.Tensor, dict | None]:
    if reference and hasattr(module, "_cpu_forward"):
        return module._cpu_forward(x, state, use_cache)
    return module(x, state, use_cache)


def _to(state: dict | None, device: torch.device) -> dict | None:
    return None if state is None else {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state.items()}


@contextlib.contextmanager
def tf32_matmuls():
    """PyTorch matmuls in TF32 inside the block (the precision Triton's fp32 ``tl.dot`` uses by default)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _forward_backward(module: torch.nn.Module, x: torch.Tensor, g_out: torch.Tensor, reference: bool,
                      dtype: torch.dtype, backward: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """Output, input gradient and parameter gradients of ``sum(y * g_out)`` (autocast to ``dtype`` unless fp32).

    With ``backward=False`` only the output (no gradients: ``None`` and ``{}``).
    """
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(backward)
    with torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype != torch.float32), \
            torch.set_grad_enabled(backward):
        y, _ = _run(module, x, reference)
    if not backward:
        return y.detach(), None, {}
    (y.float() * g_out.to(x.device)).sum().backward()
    grads = {}
    for name, p in module.named_parameters():
        if p.grad is None:
            raise RuntimeError(f"parameter {name} got no gradient ({'reference' if reference else 'fla'} path)")
        grads[name] = p.grad.detach().clone()
    return y.detach(), x.grad.detach(), grads


def _errors(y: torch.Tensor, gx: torch.Tensor | None, gp: dict[str, torch.Tensor], y_ref: torch.Tensor,
            gx_ref: torch.Tensor | None, gp_ref: dict[str, torch.Tensor]) -> dict[str, Any]:
    if gx is None or gx_ref is None:  # forward only
        return {"out": rel_err(y, y_ref)}
    per_param = {n: rel_err(g, gp_ref[n]) for n, g in gp.items()}
    worst = max(per_param, key=per_param.get) if per_param else None
    return {"out": rel_err(y, y_ref), "grad_x": rel_err(gx, gx_ref),
            "grad_params": per_param[worst] if worst else 0.0, "worst_param": worst}


def equivalence(case: str, dtype: torch.dtype, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Compare the fla path (autocast to ``dtype``) with the fp32 reference path on one layer.

    For bf16 the reference path is also run under bf16 autocast: its own error against the fp32 reference is the
    rounding floor (``bf16_floor``), and a case passes when its error is within ``max(tol, 2 * floor)``. For fp32
    with Triton in TF32 (``--f32-precision tf32``) the floor is the reference path's error with TF32 matmuls.
    """
    layout = layer_layout(case, args.scale)
    torch.manual_seed(args.seed)
    mod = build_mixer(layout, 0).to(device)
    ref = copy.deepcopy(mod)
    ref_dev = device if hasattr(ref, "_cpu_forward") else torch.device("cpu")
    ref = ref.to(ref_dev)
    B, T, D = args.batch_eq, args.seq_len, layout.d_model
    x = torch.randn(B, T + 1, D, device=device)
    g_out = torch.randn(B, T, D, device=device)

    backward = not args.forward_only
    test = _forward_backward(mod, x[:, :T], g_out, False, dtype, backward)
    exact = _forward_backward(ref, x[:, :T].to(ref_dev), g_out, True, torch.float32, backward)
    out = _errors(*test, *exact)
    auto = dict(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad():  # decode: prefill T tokens, then one step from the cached state
        with torch.autocast(**auto):
            _, s = mod(x[:, :T], None, True)
            y1, _ = mod(x[:, T:], s, True)
        _, sr = _run(ref, x[:, :T].to(ref_dev), True, None, True)
        y1r, _ = _run(ref, x[:, T:].to(ref_dev), True, sr, True)
    if set(s) != set(sr):
        raise RuntimeError(f"state keys differ: fla path {sorted(s)} vs reference {sorted(sr)}")
    state_errs = {k: rel_err(v, sr[k]) for k, v in s.items() if isinstance(v, torch.Tensor)}
    out.update(state=max(state_errs.values(), default=0.0), state_per_key=state_errs, decode_step=rel_err(y1, y1r))
    checked = [k for k in ("out", "grad_x", "grad_params", "state", "decode_step") if k in out]
    out["max_rel_err"] = max(out[k] for k in checked)
    tol = args.tol_fp32 if dtype == torch.float32 else args.tol_bf16
    floor_name = "bf16_floor" if dtype != torch.float32 else "tf32_floor" if args.f32_precision == "tf32" else None
    if floor_name:  # TF32 has no effect on a CPU reference (attention, head-wise): its floor is ~0 there
        with tf32_matmuls() if floor_name == "tf32_floor" else contextlib.nullcontext():
            floor = _errors(*_forward_backward(ref, x[:, :T].to(ref_dev), g_out, True, dtype, backward), *exact)
        out[floor_name] = max(floor[k] for k in checked if k in floor)
        tol = max(tol, 2 * out[floor_name])
    out["tolerance"] = tol
    out["pass"] = out["max_rel_err"] <= tol
    return out


def timing_layout(kind: str, scale: str = "small") -> Layout:
    """The 24-layer preset at ``scale`` used for the throughput row of ``kind``."""
    if kind == "attn":
        return resolve_preset(f"transformer@{scale}")
    if kind == "headwise":
        s = get_scale(scale)
        return s.layout([HEADWISE] * s.n_layers, name=f"{HEADWISE}-all@{scale}")
    return resolve_preset(f"{kind}-pure@{scale}")


def throughput(kind: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Forward+backward tokens/s of the 24 x 256 model of ``kind`` under bf16 autocast."""
    layout = timing_layout(kind, args.scale)
    torch.manual_seed(args.seed)
    model = HylaLM(layout).to(device)
    B, T = args.batch, args.timing_seq_len
    ids = torch.randint(0, layout.vocab_size, (B, T + 1), device=device)
    auto = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with torch.autocast(**auto):
            logits, _ = model(ids[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten()).backward()
        model.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    t1 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    t2 = time.perf_counter()
    res = {"layout": layout.name, "params": model.num_params(), "batch": B, "seq_len": T,
           "warmup_steps": args.warmup, "warmup_s": round(t1 - t0, 2), "steps": args.steps,
           "step_s": (t2 - t1) / args.steps, "tokens_per_s": B * T * args.steps / (t2 - t1)}
    if device.type == "cuda":
        res["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


def _record(results: dict[str, Any], section: str, key: str, fn: Any) -> None:
    """Run one case; a failure (kernel refusal, OOM, bug) is recorded with its reason, never fatal."""
    t0 = time.perf_counter()
    try:
        value = fn()
    except BudgetExceeded:
        raise
    except Exception as e:  # noqa: BLE001 - one failure must not stop the others
        value = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:500],
                 "traceback": traceback.format_exc(limit=6)[-2000:], "pass": False}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    value["seconds"] = round(time.perf_counter() - t0, 2)
    results[section][key] = value
    log(f"{section} {key}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in value.items() if k not in ("traceback", "state_per_key")))
    _save(results)


def _save(results: dict[str, Any]) -> None:
    out = Path(results["args"].get("out") or OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(out)


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    eq = results["equivalence"]
    return {"equivalence_pass": sum(bool(v.get("pass")) for v in eq.values()), "equivalence_total": len(eq),
            "failed": sorted(k for k, v in eq.items() if not v.get("pass"))}


def merge(paths: list[str], out: str) -> dict[str, Any]:
    """Combine the JSON of several partial runs (e.g. one process per kind, run in parallel) into one file."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    results: dict[str, Any] = {"machine": parts[0]["machine"], "args": {**parts[0]["args"], "out": out,
                               "merged_from": len(parts)}, "equivalence": {}, "throughput": {}}
    for part in parts:
        results["equivalence"].update(part["equivalence"])
        results["throughput"].update(part["throughput"])
        if part.get("stopped"):
            results.setdefault("stopped_parts", []).append(part["stopped"])
    results["summary"] = _summary(results)
    _save(results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join([*MIXER_NAMES, "headwise"]),
                   help="comma-separated mixer kinds (registry names, plus 'headwise')")
    p.add_argument("--device", default="cuda")
    p.add_argument("--scale", default="small", help="preset scale of the layers/models (small = 24 x 256)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens of the equivalence check")
    p.add_argument("--batch-eq", type=int, default=2)
    p.add_argument("--timing-seq-len", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16, help="micro-batch of the throughput runs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--tol-fp32", type=float, default=1e-3)
    p.add_argument("--tol-bf16", type=float, default=1e-2)
    p.add_argument("--skip-equivalence", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    p.add_argument("--max-seconds", type=int, default=0, help="stop (keeping results) after this many seconds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated dtypes of the equivalence check")
    p.add_argument("--no-conv-variants", action="store_true", help="skip the short-conv variants of gla/hgrn/hgrn2")
    p.add_argument("--f32-precision", choices=("tf32", "ieee"), default="tf32",
                   help="precision of Triton's fp32 dots (tf32 = Triton's default on tensor-core GPUs)")
    p.add_argument("--forward-only", action="store_true", help="compare outputs and decode states, no backward")
    p.add_argument("--out", default=str(OUT), help="result JSON path")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge partial result files into --out and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    device = torch.device(args.device)
    if args.f32_precision == "ieee":  # read by Triton when a kernel is traced, so before the first compile
        os.environ["TRITON_F32_DEFAULT"] = "ieee"
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in MIXER_NAMES and k != "headwise"]
    if unknown:
        raise SystemExit(f"gpu_equivalence: --kinds: unknown {unknown}; expected {[*MIXER_NAMES, 'headwise']}")
    results: dict[str, Any] = {"machine": machine_info(str(device)), "args": vars(args), "equivalence": {}, "throughput": {},
                               "triton_f32_default": os.environ.get("TRITON_F32_DEFAULT") or "tf32 (Triton default)"}
    if args.max_seconds > 0:
        def on_alarm(*_: Any) -> None:
            raise BudgetExceeded
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(args.max_seconds)
    try:
        if not args.skip_equivalence:
            cases = [HEADWISE if k == "headwise" else k for k in kinds]
            cases += [] if args.no_conv_variants else [c for c, k in CONV_VARIANTS.items() if k in kinds]
            for case in cases:
                for dtype in [getattr(torch, d.strip()) for d in args.dtypes.split(",") if d.strip()]:
                    _record(results, "equivalence", f"{case}/{str(dtype).removeprefix('torch.')}",
                            lambda c=case, d=dtype: equivalence(c, d, args, device))
        if not args.skip_timing:
            for kind in kinds:
                _record(results, "throughput", kind, lambda k=kind: throughput(k, args, device))
    except BudgetExceeded:
        results["stopped"] = f"--max-seconds {args.max_seconds} reached"
        log(results["stopped"])
    finally:
        signal.alarm(0)
    results["summary"] = _summary(results)
    _save(results)
    log(f"wrote {args.out}: {results['summary']}")
    return results


if __name__ == "__main__":
    main()
