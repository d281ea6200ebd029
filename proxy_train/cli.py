"""``hyla proxy train``: train and score one layout with a proxy recipe, print the result, keep the run directory.

Examples::

    hyla proxy train gla-6:1 --config tiny             # tiny scale from the tiny recipe, CPU-sized
    hyla proxy train gdn-3:1@small --config small --device cuda
    hyla proxy train layout.yaml --config examples/proxy_tiny.yaml --out runs/proxy/mine --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hyla.config import ConfigError


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register ``hyla proxy train``."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="proxy_command", metavar="COMMAND")
    parser.set_defaults(func=lambda a: (parser.print_help(sys.stderr), 2)[1])

    train = sub.add_parser("train", help="train one layout briefly; score LM loss, recall and memory")
    train.add_argument("layout", metavar="LAYOUT_OR_PRESET",
                       help="preset name (gla-6:1, gdn-3:1@small, transformer@tiny) or a layout YAML file")
    train.add_argument("--config", default="tiny", metavar="PRESET_OR_YAML",
                       help="proxy recipe: tiny, small or a YAML file (default tiny)")
    train.add_argument("--out", default=None, metavar="DIR", help="run directory (default runs/proxy/<layout_key>)")
    train.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: the recipe's device)")
    train.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    train.add_argument("--force", action="store_true", help="replace a finished result in the run directory")
    train.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import dataclasses

    from hyla.proxy_train.proxy.config import ProxyConfig
    from hyla.proxy_train.proxy.run import run_proxy
    from hyla.space.presets import load_layout

    config = ProxyConfig.load(args.config)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    layout = load_layout(args.layout, default_scale=config.scale)
    if not layout.name:
        layout = layout.with_layers(layout.layers, name=str(args.layout))
    out = Path(args.out) if args.out else Path("runs") / "proxy" / layout.key()
    if (out / "result.json").exists() and not args.force:
        raise ConfigError(f"--out {out}: already holds a finished result.json; pass --force or choose another --out")
    result = run_proxy(layout, config, out_dir=out, progress=not args.json and sys.stderr.isatty(),
                       device=args.device, overwrite=args.force)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_table(result, out)
    return 0 if result.status == "ok" else 1


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _print_table(result: Any, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from hyla.space.cost import human_bytes, human_count

    r = result
    table = Table(title=f"proxy {r.layout_name or r.layout_key}: {r.status}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("status", r.status + (f" ({r.fail_reason})" if r.fail_reason else "")),
        ("lm_val_loss", _fmt(r.lm_val_loss)),
        ("recall", _fmt(r.recall)),
        *((f"  {k}", _fmt(v)) for k, v in r.recall_tasks.items()),
        ("train_loss", _fmt(r.train_loss)),
        ("params", f"{human_count(r.params)} ({human_count(r.non_embedding_params)} non-embedding)"),
        (f"kv @ {r.context}", human_bytes(r.kv_bytes)),
        (f"state @ {r.context}", f"{human_bytes(r.state_bytes)} (KV + recurrent + conv)"),
        ("steps / tokens", f"{r.steps} / {human_count(r.tokens_seen)}"),
        ("tokens/s", _fmt(r.tokens_per_s)),
        ("peak memory", human_bytes(r.peak_mem_bytes) if r.peak_mem_bytes else "-"),
        ("wall", f"{r.wall_s:.1f} s on {r.device}"),
        ("run dir", str(out)),
    ]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
