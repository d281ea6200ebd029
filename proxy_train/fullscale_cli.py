"""``hyla train SPEC.yaml``: full-scale training of one layout on Ray Train (see `hyla.proxy_train.fullscale`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from hyla.config import ConfigError


def add_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> None:
    """Register ``hyla train``."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=(
        "Run the same command again to resume a killed run. SIGTERM stops gracefully after a checkpoint (exit 3); "
        "a finished run directory is never overwritten. Exit codes: 0 finished, 2 bad input, 3 stopped."))
    p.add_argument("spec", help="run spec YAML (see examples/full_tiny.yaml)")
    p.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001 or auto); "
                   "default: a local Ray instance")
    p.add_argument("--tokens", type=float, default=None, help="override the token budget (e.g. 2e9)")
    p.add_argument("--out", default=None, help="override out_dir")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="refuse to continue from checkpoints in out_dir (default: resume from the newest)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from hyla.proxy_train.fullscale import RunSpec, train_full

    spec = RunSpec.load(args.spec)
    if args.tokens is not None:
        if args.tokens < 1 or not float(args.tokens).is_integer():
            raise ConfigError(f"--tokens: {args.tokens!r} must be a positive whole number of tokens")
        spec = replace(spec, tokens=int(args.tokens))
    if args.out is not None:
        spec = replace(spec, out_dir=args.out)
    spec = RunSpec.from_dict(spec.to_dict(), where=args.spec)  # re-validate the overridden spec
    result = train_full(spec, address=args.address, resume=args.resume)
    print(json.dumps(result, indent=2))
    return 0 if result.get("status") == "finished" else 3
