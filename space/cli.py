"""``hyla space``: inspect layouts and the paper grid (parameters, FLOPs, KV/state memory).

    hyla space show gdn-6:1@340m --context 2048,32k      per-layer table and totals
    hyla space show my_layout.yaml --json                machine-readable
    hyla space grid --scale tiny                         the 31 paper layouts with params and memory
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import Any

from hyla.config import ConfigError
from hyla.space.cost import (dtype_bytes, flops_per_token, human_bytes, human_count, inference_memory, layer_memory,
                             mixer_params, param_count)
from hyla.space.layout import Layout, letter_legend
from hyla.space.presets import CONVENTIONS, DEFAULT_SCALE, SCALES, load_layout, paper_grid


def parse_contexts(text: str) -> list[int]:
    """``"2048,32k"`` -> ``[2048, 32768]`` (``k`` = 1024); a bad item raises a ConfigError naming it."""
    out = []
    for item in str(text).split(","):
        item = item.strip().lower()
        mult = 1024 if item.endswith("k") else 1
        digits = item[:-1] if mult > 1 else item
        if not digits.isdigit() or int(digits) < 1:
            raise ConfigError(f"--context: {item!r} is not a positive token count; expected e.g. 2048,32k")
        out.append(int(digits) * mult)
    return out


def layout_report(layout: Layout, contexts: list[int], dtype: str = "bfloat16",
                  seq_len: int | None = None) -> dict[str, Any]:
    """Everything ``hyla space show`` prints, as plain data (the ``--json`` output)."""
    seq = seq_len or contexts[0]
    pc = param_count(layout)
    layers = []
    for i, spec in enumerate(layout.layers):
        mems = [layer_memory(layout, i, c, dtype) for c in contexts]
        layers.append({"index": i, "layer": spec.to_obj(), "letter": spec.letter,
                       "mixer_params": mixer_params(layout, i), "block_params": pc.per_layer[i],
                       "recurrent_bytes": mems[0].recurrent_bytes, "conv_bytes": mems[0].conv_bytes,
                       "kv_bytes": {str(c): m.kv_bytes for c, m in zip(contexts, mems)}})
    memory = {}
    for c in contexts:
        rep = inference_memory(layout, c, dtype)
        memory[str(c)] = {"kv_bytes": rep.kv_bytes, "state_bytes": rep.state_bytes, "total_bytes": rep.total_bytes,
                          "kv_bytes_per_token": rep.kv_bytes / c}
    return {"name": layout.name, "key": layout.key(), "layers_string": layout.layer_string(),
            "layout": layout.to_dict(), "dtype": dtype, "contexts": contexts,
            "params": {"total": pc.total, "embedding": pc.embedding, "head": pc.head,
                       "non_embedding": pc.non_embedding},
            "flops_per_token": {"seq_len": seq, "training": flops_per_token(layout, seq)},
            "attention_share": layout.attention_share, "layers": layers, "memory": memory}


def _console():
    from rich.console import Console  # lazy: keeps `hyla --help` fast

    return Console(width=max(shutil.get_terminal_size((160, 24)).columns, 120), highlight=False)


def _show(args: argparse.Namespace) -> int:
    contexts = parse_contexts(args.context)
    dtype_bytes(args.dtype)
    layout = load_layout(args.layout, default_scale=args.scale)
    report = layout_report(layout, contexts, args.dtype, args.seq_len)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.table import Table

    con = _console()
    con.print(f"[bold]{layout.name or args.layout}[/]  key {report['key']}  {layout.layer_string(6)}")
    con.print(f"d_model {layout.d_model}, {layout.n_layers} layers, {layout.num_heads} heads (kv "
              f"{layout.kv_heads}), mlp {layout.mlp_hidden}, vocab {layout.vocab_size}; dtype {args.dtype}")
    table = Table(title="per layer (memory of one sequence)")
    for col in ("#", "layer", "mixer params", "block params", "recurrent", "conv"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for c in contexts:
        table.add_column(f"KV @{c}", justify="right")
    for row in report["layers"]:
        table.add_row(str(row["index"]), f"{row['letter']} {_layer_text(row['layer'])}",
                      f"{row['mixer_params']:,}", f"{row['block_params']:,}", human_bytes(row["recurrent_bytes"]),
                      human_bytes(row["conv_bytes"]), *(human_bytes(row["kv_bytes"][str(c)]) for c in contexts))
    con.print(table)
    con.print(letter_legend([report["layers_string"]]), style="dim", soft_wrap=True)
    p = report["params"]
    con.print(f"params: total {p['total']:,} ({human_count(p['total'])}), non-embedding {p['non_embedding']:,} "
              f"({human_count(p['non_embedding'])}), embedding {p['embedding']:,}, head {p['head']:,}")
    f = report["flops_per_token"]
    con.print(f"training FLOPs/token at seq_len {f['seq_len']}: {f['training']:.4g} ({human_count(f['training'])})")
    totals = Table(title="inference memory of one sequence")
    for col in ("context", "KV", "state", "total", "KV per token"):
        totals.add_column(col, justify="right")
    for c in contexts:
        m = report["memory"][str(c)]
        totals.add_row(f"{c:,}", human_bytes(m["kv_bytes"]), human_bytes(m["state_bytes"]),
                       human_bytes(m["total_bytes"]), human_bytes(m["kv_bytes_per_token"]))
    con.print(totals)
    return 0


def _layer_text(obj: Any) -> str:
    return obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))


def _grid(args: argparse.Namespace) -> int:
    contexts = parse_contexts(args.context)
    dtype_bytes(args.dtype)
    rows = []
    for layout in paper_grid(args.scale, args.convention):
        pc = param_count(layout)
        mem = {str(c): inference_memory(layout, c, args.dtype).total_bytes for c in contexts}
        rows.append({"name": layout.name, "key": layout.key(), "layers": layout.layer_string(),
                     "params": pc.total, "non_embedding": pc.non_embedding, "memory_bytes": mem})
    if args.json:
        print(json.dumps({"scale": args.scale, "convention": args.convention, "dtype": args.dtype,
                          "contexts": contexts, "layouts": rows}, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=f"paper grid @{args.scale} ({args.convention} placement; memory = KV + state, "
                        f"one sequence, {args.dtype})")
    for col in ("preset", "layers", "params", "non-emb"):
        table.add_column(col, justify="right" if "params" in col or col == "non-emb" else "left")
    for c in contexts:
        table.add_column(f"mem @{c}", justify="right")
    for r in rows:
        table.add_row(r["name"], r["layers"], human_count(r["params"]), human_count(r["non_embedding"]),
                      *(human_bytes(r["memory_bytes"][str(c)]) for c in contexts))
    con = _console()
    con.print(table)
    con.print(letter_legend(r["layers"] for r in rows), style="dim", soft_wrap=True)
    return 0


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register ``hyla space show|grid``."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="space_command", metavar="COMMAND")
    parser.set_defaults(func=lambda a: (parser.print_help(sys.stderr), 2)[1])

    show = sub.add_parser("show", help="per-layer params and KV/state memory of a preset or layout YAML")
    show.add_argument("layout", metavar="PRESET_OR_YAML", help="e.g. gdn-6:1@340m, gla-pure@tiny, layout.yaml")
    show.add_argument("--context", default="2048", help="comma-separated context lengths (k = 1024), "
                                                        "e.g. 2048,32k (default 2048)")
    show.add_argument("--dtype", default="bfloat16", help="model dtype: bfloat16, float16, float32")
    show.add_argument("--seq-len", type=int, default=None, help="training sequence length of the FLOP "
                                                                "estimate (default: first context)")
    show.add_argument("--scale", default=DEFAULT_SCALE, choices=list(SCALES),
                      help="scale of preset names without @scale")
    show.add_argument("--json", action="store_true", help="print JSON instead of tables")
    show.set_defaults(func=_show)

    grid = sub.add_parser("grid", help="the paper's 31 layouts of a scale with params and memory")
    grid.add_argument("--scale", default="340m", choices=list(SCALES))
    grid.add_argument("--convention", default="last", choices=list(CONVENTIONS),
                      help="r:1 placement: last (released checkpoints) or literal (r linear then 1 attention)")
    grid.add_argument("--context", default="2048", help="comma-separated context lengths, e.g. 2048,32k")
    grid.add_argument("--dtype", default="bfloat16")
    grid.add_argument("--json", action="store_true", help="print JSON instead of a table")
    grid.set_defaults(func=_grid)
