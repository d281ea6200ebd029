"""The `hyla` command: one entry point, subcommands contributed by each package's ``cli`` module.

Each module listed in ``SUBCOMMANDS`` exposes ``add_parser(subparsers) -> None`` which registers its
subcommand(s) and sets ``func`` (called with the parsed args, returning an exit code) via ``set_defaults``.
Modules are imported lazily so ``hyla --help`` stays fast and a broken optional stack cannot break the rest.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from hyla.cache_dirs import use_kernel_caches
from hyla.config import ConfigError

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "space": ("hyla.space.cli", "inspect layouts and presets: parameters, FLOPs, KV/state memory"),
    "proxy": ("hyla.proxy_train.cli", "train and score one proxy model (LM loss + recall suite)"),
    "search": ("hyla.search.cli", "run, resume and inspect an Optuna layout search on Ray"),
    "analysis": ("hyla.analysis.cli", "Pareto plots, study reports, exported configs, calibration"),
    "train": ("hyla.proxy_train.train.cli", "full-scale (340M / 1.3B) training of a layout on Ray Train"),
}


def _pareto_html(cfg: Any, console: Any) -> None:
    """`hyla search run`'s Pareto HTML (analysis code).

    Handed to the search command as ``args.pareto_html``: search never imports analysis (the packages import
    only downwards, tests/test_import_graph.py).
    """
    from hyla.analysis.cli import search_pareto_html

    search_pareto_html(cfg, console)


def version() -> str:
    """The installed hyla's version (package metadata), or ``"unknown"`` when hyla is not installed."""
    from importlib import metadata

    try:
        return metadata.version("hyla")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyla", description="Search hybrid linear-attention LM layouts.")
    parser.add_argument("--version", action="version", version=f"hyla {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but something it needs is missing
                raise
            continue  # subcommand not built (yet)
        mod.add_parser(sub, name, help_text)
    parser.set_defaults(pareto_html=_pareto_html)  # every subcommand's args carry it; `search run` calls it
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    use_kernel_caches()  # before any subcommand imports fla: one kernel cache per machine (hyla.cache_dirs)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"hyla: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hyla: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
