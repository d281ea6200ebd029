"""Check exports with weights: fla's model class and AutoModelForCausalLM load them; logits and greedy decoding agree.

    python benchmarks/gpu_export_check.py EXPORT_DIR [EXPORT_DIR ...] --out DIR     # on a GPU machine

EXPORT_DIR is what ``hyla analysis export ... --checkpoint RUN_DIR --out EXPORT_DIR`` wrote. For each one:

- **hyla**: ``import hyla`` (nothing else), ``AutoModelForCausalLM.from_pretrained(EXPORT_DIR)`` on ``--device``.
  Its logits on a seeded random prompt are compared with a reference: the same weights in hyla's model on the CPU
  in fp32 (hyla's pure-PyTorch path, independent of fla's kernels).
- **fla**: ``import fla``, ``AutoModelForCausalLM.from_pretrained(EXPORT_DIR/fla, output_loading_info=True)`` (no
  missing, unexpected or mismatched keys) and ``load_state_dict(fla/model.safetensors, strict=True)``; its logits on
  the same device are compared with hyla's. Skipped, with the reason, when the export has no fla/ (fla cannot
  express the layout) or when the layout has attention layers and flash-attn is not installed (fla's Attention
  refuses to build without it).
- **generate**: greedy ``generate`` with ``use_cache=True`` and ``use_cache=False``, for each model: the tokens must
  be equal. Whether fla's and hyla's tokens agree is recorded, not required (near-ties may flip an argmax).
  fla 0.6.0's ``forward`` reads its cache from ``past_key_values`` only, and transformers 5.24's ``generate`` passes
  ``cache=``, so there fla's cached decoding runs without state. When fla's cached and uncached tokens differ, the
  raw result is kept (``generate_raw``) and generation is repeated with `cache_kwarg_shim` (``cache=`` handed to fla
  as ``past_key_values``); the pass uses that second result, and ``cache_kwarg_shim: true`` says so.

Errors are max |a - b| / max |b| over the logits. Pass: <= ``--tol`` (default 2e-2 on CUDA, where fla's fp32 is
TF32, see benchmarks/gpu_equivalence.py; 1e-3 on CPU). Results go to ``OUT/export_check.json`` (rewritten after each
export, so a run cut short keeps what it measured); the exit status is 0 only when every check passed.

``--device cpu`` (tests, tiny widths): fla's Triton kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set
here before triton is imported; autotuning is skipped, because every candidate config computes the same result), and
``--flash-attn-standin`` replaces flash-attn's two functions by causal SDPA with the same semantics (flash-attn has
no CPU build), so fla's attention layers around them (projections, rotary, cache) run too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("exports", nargs="+", metavar="EXPORT_DIR", help="export directories written with --checkpoint")
    p.add_argument("--out", required=True, help="output directory (export_check.json)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (Triton interpreter; tests)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype on --device")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens (seeded random ids)")
    p.add_argument("--batch", type=int, default=2, help="prompts per batch")
    p.add_argument("--new-tokens", type=int, default=16, help="greedy tokens generated")
    p.add_argument("--tol", type=float, default=None, help="max relative logit error (default: 2e-2 cuda, 1e-3 cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flash-attn-standin", action="store_true",
                   help="replace flash-attn by causal SDPA in fla's Attention (CPU tests only)")
    return p.parse_args(argv)


def setup_interpreter() -> None:
    """Run Triton kernels on the CPU (before triton is imported): interpreter on, autotuner benchmarking off."""
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import autotuner

    autotuner.Autotuner._bench = lambda self, *args, config, **kwargs: [0.0, 0.0, 0.0]


def install_flash_attn_standin() -> None:
    """fla's Attention calls ``flash_attn_func``/``flash_attn_varlen_func``; give it causal SDPA instead."""
    import fla.layers.attn as fla_attn
    import torch
    import torch.nn.functional as F

    def attn(q, k, v, causal=True, window_size=(-1, -1), **_: Any):  # (B, T, H, D), bottom-right causal
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if k.shape[1] != q.shape[1]:  # GQA
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        tq, tk = q.shape[2], k.shape[2]
        i = torch.arange(tq, device=q.device)[:, None] + (tk - tq)
        j = torch.arange(tk, device=q.device)[None]
        mask = j <= i
        if window_size[0] >= 0:
            mask &= j >= i - window_size[0]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)

    def attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None, causal=True,
                    window_size=(-1, -1), **_: Any):  # (total, H, D) with sequence boundaries
        outs = []
        for b in range(len(cu_seqlens_q) - 1):
            sq, sk = slice(cu_seqlens_q[b], cu_seqlens_q[b + 1]), slice(cu_seqlens_k[b], cu_seqlens_k[b + 1])
            outs.append(attn(q[sq][None], k[sk][None], v[sk][None], window_size=window_size)[0])
        return torch.cat(outs)

    fla_attn.flash_attn_func, fla_attn.flash_attn_varlen_func = attn, attn_varlen


def cache_kwarg_shim(model) -> None:
    """Let ``model.forward`` receive the generation cache as ``cache=`` (what transformers 5.24's ``generate``
    passes) when it only reads ``past_key_values`` (fla 0.6.0's models)."""
    forward = model.forward

    def forward_with_cache(*args: Any, cache: Any = None, **kwargs: Any) -> Any:
        if cache is not None and kwargs.get("past_key_values") is None:
            kwargs["past_key_values"] = cache
        return forward(*args, **kwargs)

    model.forward = forward_with_cache


def rel_err(a, b) -> float:
    """max |a - b| / max |b| in fp32."""
    a, b = a.float().cpu(), b.float().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def greedy(model, ids, new_tokens: int) -> dict[str, Any]:
    """Greedy continuations with and without the cache, and whether they agree."""
    import torch

    out: dict[str, Any] = {}
    with torch.no_grad():
        for cache in (True, False):
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, do_sample=False, use_cache=cache)
            out["cached" if cache else "uncached"] = gen[:, ids.shape[1]:].tolist()
    out["cache_equal"] = out["cached"] == out["uncached"]
    return out


def check_export(export_dir: str | Path, device: str = "cuda", dtype: str = "float32", prompt_len: int = 32,
                 batch: int = 2, new_tokens: int = 16, tol: float | None = None, seed: int = 0) -> dict[str, Any]:
    """One export's record (see the module docstring); ``ok`` is True when every check that ran passed."""
    import torch
    from safetensors.torch import load_file

    import hyla  # noqa: F401  (all transformers needs to load model_type "hyla")
    from transformers import AutoModelForCausalLM

    tol = tol if tol is not None else (1e-3 if device == "cpu" else 2e-2)
    export = Path(export_dir)
    torch_dtype = getattr(torch, dtype)
    rec: dict[str, Any] = {"export": str(export), "device": device, "dtype": dtype, "tol": tol}
    t0 = time.time()
    hyla_model = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    rec["hyla_class"] = type(hyla_model).__name__
    layout = hyla_model.config.to_layout()
    rec["layout"] = layout.layer_string()
    vocab = layout.vocab_size
    ids = torch.randint(0, vocab, (batch, prompt_len), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hyla_model(input_ids=ids).logits.float()  # CPU fp32: hyla's PyTorch path
    hyla_model.to(device=device, dtype=torch_dtype)
    dev_ids = ids.to(device)
    with torch.no_grad():
        hyla_logits = hyla_model(input_ids=dev_ids).logits.float()
    rec["hyla"] = {"logits_rel_err_vs_cpu_ref": rel_err(hyla_logits, ref), **greedy(hyla_model, dev_ids, new_tokens)}
    checks = [rec["hyla"]["logits_rel_err_vs_cpu_ref"] <= tol, rec["hyla"]["cache_equal"]]

    fla_dir = export / "fla"
    has_attn = any(s.mixer == "attn" for s in layout.layers)
    import fla.layers.attn as fla_attn  # also registers fla's model types

    if not (fla_dir / "model.safetensors").is_file():
        rec["fla"] = {"skipped": "no fla/model.safetensors: fla cannot express this layout "
                                 "(fla_config_unsupported.txt) or the export has no weights"}
    elif has_attn and fla_attn.flash_attn_func is None:
        rec["fla"] = {"skipped": "flash-attn is not installed: fla's Attention refuses to build without it"}
    else:
        fla_model, info = AutoModelForCausalLM.from_pretrained(str(fla_dir), output_loading_info=True)
        keys = {k: sorted(map(str, v)) for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                                           "mismatched_keys")}
        fla_model.load_state_dict(load_file(str(fla_dir / "model.safetensors")), strict=True)
        fla_model = fla_model.to(device=device, dtype=torch_dtype).eval()
        with torch.no_grad():
            fla_logits = fla_model(input_ids=dev_ids).logits.float()
        gen = greedy(fla_model, dev_ids, new_tokens)
        rec["fla"] = {"class": type(fla_model).__name__, "loading_info": keys,
                      "logits_rel_err_vs_hyla": rel_err(fla_logits, hyla_logits),
                      "logits_rel_err_vs_cpu_ref": rel_err(fla_logits, ref), "cache_kwarg_shim": False}
        if not gen["cache_equal"]:
            rec["fla"]["generate_raw"] = gen
            cache_kwarg_shim(fla_model)
            gen = greedy(fla_model, dev_ids, new_tokens)
            rec["fla"]["cache_kwarg_shim"] = True
        rec["fla"].update(gen, tokens_equal_hyla=gen["cached"] == rec["hyla"]["cached"])
        checks += [not any(keys.values()), rec["fla"]["logits_rel_err_vs_hyla"] <= tol, gen["cache_equal"]]
    rec["ok"] = all(checks)
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        setup_interpreter()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_export_check: error: --device cuda but CUDA is not available (use --device cpu for tests)")
        return 2
    if args.flash_attn_standin:
        install_flash_attn_standin()
    import fla
    import transformers

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": {"host": platform.node(), "device": torch.cuda.get_device_name() if args.device != "cpu"
                    else "cpu (Triton interpreter)", "torch": torch.__version__, "fla": fla.__version__,
                    "transformers": transformers.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
        "args": {k: v for k, v in vars(args).items() if k != "exports"}, "exports": []}
    for export in args.exports:
        try:
            rec = check_export(export, args.device, args.dtype, args.prompt_len, args.batch, args.new_tokens,
                               args.tol, args.seed)
        except Exception as e:  # noqa: BLE001  (recorded, and the next export still runs)
            rec = {"export": export, "ok": False, "error": f"{type(e).__name__}: {e}"}
        result["exports"].append(rec)
        result["ok"] = all(r["ok"] for r in result["exports"])
        (out / "export_check.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: rec.get(k) for k in ("export", "layout", "ok", "error")}), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
