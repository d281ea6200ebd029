"""``hyla train SPEC.yaml``: full-scale training of one layout on Ray Train (see `hyla.proxy_train.train.full_run`).

``hyla train SPEC.yaml --dry-run`` trains nothing: it prints the model the spec resolves to (layer string, shape,
parameters, KV and state bytes of one sequence at the spec's ``seq_len``, training FLOPs per token) from
`hyla.space.cost`, the same numbers as ``hyla space show`` of that layout, plus the token budget and steps.

Both check the inputs before Ray starts (`hyla.proxy_train.train.full_run.check_inputs`: layout, text source,
tokenizer, recall tasks): bad input is one line and exit 2, with nothing written. A dry run lists what only the
Hugging Face hub could confirm, when the hub cannot be reached from here, as unchecked instead.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

from hyla.config import ConfigError


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register ``hyla train``."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=(
        "Run the same command again to resume a killed run. SIGTERM stops gracefully after a checkpoint (exit 3); "
        "a finished run directory is never overwritten. Exit codes: 0 finished, 2 bad input, 3 stopped or diverged."))
    p.add_argument("spec", help="run spec YAML (see examples/full_tiny.yaml)")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001 or auto); "
                   "default: a local Ray instance")
    p.add_argument("--tokens", type=float, default=None, help="override the token budget (e.g. 2e9)")
    p.add_argument("--out", default=None, help="override out_dir")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to continue from checkpoints in out_dir (default: resume from the newest)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved model (layers, params, KV/state "
                   "bytes at seq_len, FLOPs per token) and the budget; train nothing")
    p.add_argument("--json", action="store_true", help="with --dry-run: print JSON (hyla space show --json's "
                   "fields plus 'run')")
    p.set_defaults(func=_run)


def dry_run_report(spec: Any) -> dict[str, Any]:
    """What ``--dry-run`` prints, as plain data: `hyla.space.cli.layout_report` at the spec's ``seq_len`` (dtype
    bfloat16 when ``bf16``, else float32) plus a ``run`` entry (scale, tokens, steps, batch)."""
    from hyla.space.cli import layout_report

    dtype = "bfloat16" if spec.bf16 else "float32"
    report = layout_report(spec.resolve_layout(), [spec.seq_len], dtype)
    report["run"] = {"scale": spec.scale, "seq_len": spec.seq_len, "tokens": spec.total_tokens,
                     "steps": spec.total_steps, "global_batch_tokens": spec.global_batch_tokens,
                     "accum_steps": spec.accum_steps, "num_workers": spec.num_workers}
    return report


def _print_dry_run(report: dict[str, Any]) -> None:
    from hyla.space.cost import human_bytes, human_count
    from hyla.space.layout import letter_legend

    lay, p, run = report["layout"], report["params"], report["run"]
    mem = report["memory"][str(run["seq_len"])]
    n = len(lay["layers"])
    letters = report["layers_string"]
    print(f"{lay['name'] or report['key']}  key {report['key']}  (scale {run['scale']}, nothing trained)")
    print(f"layers   {' '.join(letters[i:i + 6] for i in range(0, n, 6))}  ({letter_legend([letters])})")
    kv = lay["num_kv_heads"] or lay["num_heads"]
    print(f"shape    {n} x d_model {lay['d_model']}, {lay['num_heads']} heads (kv {kv}), mlp {lay['mlp_hidden']}, "
          f"vocab {lay['vocab_size']}")
    print(f"params   total {p['total']:,} ({human_count(p['total'])}), non-embedding {p['non_embedding']:,} "
          f"({human_count(p['non_embedding'])})")
    print(f"memory   one sequence at {run['seq_len']:,} tokens ({report['dtype']}): KV {human_bytes(mem['kv_bytes'])}, "
          f"state {human_bytes(mem['state_bytes'])}, total {human_bytes(mem['total_bytes'])} "
          f"({mem['total_bytes']:,} B)")
    f = report["flops_per_token"]
    print(f"FLOPs    training, per token at seq_len {f['seq_len']}: {f['training']:.4g} ({human_count(f['training'])})")
    print(f"budget   {run['tokens']:,} tokens = {run['steps']:,} steps of {run['global_batch_tokens']:,} "
          f"(workers {run['num_workers']} x accumulation steps {run['accum_steps']})")
    print("inputs   text source, tokenizer and recall tasks checked" if not run["unchecked"] else
          "inputs   not checked here (the run checks them before it starts):")
    for line in run["unchecked"]:
        print(f"  {line}")


def _run(args: argparse.Namespace) -> int:
    from hyla.proxy_train.train.full_run import check_inputs, train_full
    from hyla.proxy_train.train.full_spec import RunSpec

    if args.json and not args.dry_run:
        raise ConfigError("--json: only with --dry-run (a training run prints its result as JSON anyway)")
    spec = RunSpec.load(args.spec)
    if args.tokens is not None:
        if args.tokens < 1 or not float(args.tokens).is_integer():
            raise ConfigError(f"--tokens: {args.tokens!r} must be a positive whole number of tokens")
        spec = replace(spec, tokens=int(args.tokens))
    if args.out is not None:
        spec = replace(spec, out_dir=args.out)
    spec = RunSpec.from_dict(spec.to_dict(), where=args.spec)  # re-validate the overridden spec
    try:  # layout, text source, tokenizer, recall tasks: before Ray starts and before anything is written
        unchecked = check_inputs(spec, hub=not args.dry_run)
    except ConfigError as e:  # the inputs' own checks do not know the file: name it
        raise (e if str(e).startswith(args.spec) else ConfigError(f"{args.spec}: {e}")) from None
    if args.dry_run:
        report = dry_run_report(spec)
        report["run"]["unchecked"] = unchecked
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_dry_run(report)
        return 0
    result = train_full(spec, address=args.address, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") == "finished" else 3
