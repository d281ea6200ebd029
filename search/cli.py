"""`hyla search run|status|promote`: thin wrappers over `hyla.search.study`."""

from __future__ import annotations

import argparse
from typing import Any

from hyla.config import ConfigError
from hyla.search.locate import STUDY_HELP

_EPILOG = ("Studies live in an Optuna storage (default: a journal file in the run directory). Browse them live with "
           "optuna-dashboard, e.g. `optuna-dashboard hyla_runs/NAME/study.journal` or "
           "`optuna-dashboard postgresql://...`; rung r of study NAME is the Optuna study NAME/rung<r>.")


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register `hyla search` and its subcommands."""
    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=_EPILOG)
    sub = p.add_subparsers(dest="search_command", metavar="SUBCOMMAND")

    run = sub.add_parser("run", help="run or resume a search (all rungs)", epilog=_EPILOG)
    run.add_argument("study", help="study YAML (see examples/quickstart.yaml)")
    run.add_argument("--seed-grid", choices=["paper"], default=None,
                     help="enqueue the paper's 31 layouts (at the space's scale) at rung 0")
    run.add_argument("--n-trials", type=int, default=None, help="rung-0 trials to finish (completed + failed)")
    run.add_argument("--address", default=None, help="Ray cluster address (ray://host:10001, host:6379, auto)")
    run.add_argument("--no-plot", action="store_true", help="do not write the Pareto HTML")
    run.set_defaults(func=_run)

    st = sub.add_parser("status", help="trials per rung and state, Pareto set, running/failed trials", epilog=_EPILOG)
    st.add_argument("study", metavar="STUDY", help=f"{STUDY_HELP} (as `hyla analysis` takes), or a study name "
                                                   "with --storage")
    st.add_argument("--study", dest="study_name", default=None, help="study name when the storage holds several")
    st.add_argument("--storage", default=None, help="storage URL or journal file holding the study named STUDY")
    st.set_defaults(func=_status)

    pr = sub.add_parser("promote", help="run the next rung only (promote from the last finished rung)",
                        epilog=_EPILOG)
    pr.add_argument("study", help="study YAML")
    pr.add_argument("--address", default=None, help="Ray cluster address")
    pr.set_defaults(func=_promote)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def _console() -> Any:
    from rich.console import Console

    return Console()


def _load(args: argparse.Namespace, **overrides: Any) -> Any:
    from hyla.search.config import load_study_config

    return load_study_config(args.study, address=getattr(args, "address", None), **overrides)


def _run(args: argparse.Namespace) -> int:
    from hyla.search.study import run_search

    if args.n_trials is not None and args.n_trials < 0:
        raise ConfigError(f"--n-trials: {args.n_trials} must be >= 0")
    cfg = _load(args, n_trials=args.n_trials, seed_grid=args.seed_grid)
    console = _console()
    summary = run_search(cfg, console=console)
    _report(cfg, summary, console)
    if not args.no_plot:
        _plot(args, cfg, console)
    return 0


def _promote(args: argparse.Namespace) -> int:
    from hyla.search.storage import load_rung_studies
    from hyla.search.prepare import prepare
    from hyla.search.study import counted, run_search

    cfg = _load(args)
    prep = prepare(cfg)
    studies = load_rung_studies(prep.storage, cfg.name)
    finished = [r for r, s in studies.items() if counted(s.get_trials(deepcopy=False)) > 0]
    if not finished:
        raise ConfigError(f"{cfg.where}: rung 0 of study {cfg.name!r} has no finished trials; run "
                          f"`hyla search run {args.study}` first")
    nxt = max(finished) + 1
    console = _console()
    if nxt >= len(cfg.rungs):
        console.print(f"all {len(cfg.rungs)} rung(s) have run; re-checking full-run specs of the last rung")
        nxt = len(cfg.rungs) - 1
    summary = run_search(cfg, rungs=[nxt], console=console)
    _report(cfg, summary, console)
    return 0


def _report(cfg: Any, summary: Any, console: Any) -> None:
    from rich.table import Table

    for r in summary.rungs:
        console.print(f"rung {r.rung}: {r.completed} completed ({r.reused} reused), {r.failed} failed, "
                      f"{r.retried} worker retries"
                      + (f", {r.repeats} repeated proposals of scored layouts not trained" if r.repeats else ""))
    table = Table(title=f"Pareto set of {cfg.study_name(summary.pareto_rung)} ({len(summary.pareto)} trials)")
    for col in ("trial", "layout", "preset", "seeds", *cfg.objectives):
        table.add_column(col, overflow="fold")
    rows = objective_table_rows(summary.pareto, cfg.objectives)
    for row in rows:
        table.add_row(*row)
    _print_table(console, table, rows)
    for p in summary.full_run_specs:
        console.print(f"full-run spec: {p}")


def _print_table(console: Any, table: Any, rows: list[list[str]]) -> None:
    """Print a trial table and, under it, what the letters of its layout column mean (column 1 of ``rows``)."""
    from hyla.space.layout import letter_legend

    console.print(table)
    legend = letter_legend(row[1] for row in rows)
    if legend:
        console.print(legend, style="dim", highlight=False, soft_wrap=True)


def _plot(args: argparse.Namespace, cfg: Any, console: Any) -> None:
    """Pareto HTML of the study: analysis code, which `hyla` (hyla.cli) hands in as ``args.pareto_html``.

    Search never imports analysis (analysis reads search's storage: tests/test_import_graph.py).
    """
    pareto_html = getattr(args, "pareto_html", None)
    if pareto_html is None:
        console.print("(Pareto HTML skipped: no plotter; `hyla search run` through the `hyla` command writes it)")
        return
    pareto_html(cfg, console)


def _promote_settings(study: Any, rung: int) -> dict[str, Any]:
    """Promotion rule of a rung as `promotion_report` kwargs, from the config stored with the study (what ran)."""
    promote: Any = None
    rungs = (study.user_attrs.get("config") or {}).get("rungs") or []
    if rung < len(rungs) and isinstance(rungs[rung], dict):
        promote = rungs[rung].get("promote")

    def get(name: str, default: Any) -> Any:
        return promote.get(name, default) if isinstance(promote, dict) else default

    return {"rule": get("rule", "pareto"), "k": get("k", 3), "objective": get("objective", None),
            "noise": get("noise", True), "z": get("noise_z", 2.0)}


def worker_nodes_lines(trials: list[Any]) -> list[str]:
    """Where a rung's trials ran (trials per Ray node, user attr ``worker_node``) and the worker deaths they hit."""
    import collections

    per_node: collections.Counter[str] = collections.Counter()
    for t in trials:
        node = t.user_attrs.get("worker_node")
        if isinstance(node, dict):
            per_node[f"node {str(node.get('node_id', '?'))[:8]} ({node.get('hostname', '?')}, "
                     f"{node.get('node_ip', '?')})"] += 1
    lines = ["ran on " + ", ".join(f"{name}: {n}" for name, n in sorted(per_node.items()))] if per_node else []
    hit = [t for t in trials if t.user_attrs.get("worker_deaths")]
    if hit:
        deaths = sum(len(t.user_attrs["worker_deaths"]) for t in hit)
        lines.append(f"worker deaths: {deaths} in trial(s) " + ", ".join(str(t.number) for t in hit)
                     + " (retried, or failed as worker_died)")
    return lines


def _status(args: argparse.Namespace) -> int:
    from rich.table import Table

    from hyla.search.locate import locate_study
    from hyla.search.rungs import pareto_front, promotion_report
    from hyla.search.storage import load_rung_studies

    if args.storage:
        found = locate_study(args.storage, args.study_name or args.study, where="--storage")
    else:
        found = locate_study(args.study, args.study_name)
    studies = load_rung_studies(found.storage, found.name)
    if not studies:
        raise ConfigError(f"study {found.name!r}: no rung studies ({found.name}/rung0 ...) in {found.source}")
    console = _console()
    objectives = [o["name"] for o in studies[0].user_attrs.get("objectives", [])] if 0 in studies else []
    for rung, study in studies.items():
        objectives = [o["name"] for o in study.user_attrs.get("objectives", [])] or objectives
        directions = [o["direction"] for o in study.user_attrs.get("objectives", [])]
        trials = study.get_trials(deepcopy=False)
        states: dict[str, int] = {}
        for t in trials:
            states[t.state.name] = states.get(t.state.name, 0) + 1
        console.print(f"[bold]{study.study_name}[/]: {len(trials)} trials: "
                      + ", ".join(f"{k.lower()} {v}" for k, v in sorted(states.items())))
        for line in worker_nodes_lines(trials):
            console.print(f"  {line}")
        repeats = [t for t in trials if t.state.name == "PRUNED" and "repeat_of" in t.user_attrs]
        if repeats:
            console.print(f"  pruned: {len(repeats)} proposal(s) of a layout the rung already had, not trained "
                          "(repeat_of: " + ", ".join(f"{t.number}->{t.user_attrs['repeat_of']}" for t in repeats) + ")")
        for t in trials:
            if t.state.name == "RUNNING":
                console.print(f"  running: trial {t.number} {t.user_attrs.get('layout_key', '')}")
            elif t.state.name == "FAIL":
                console.print(f"  failed: trial {t.number}: {t.user_attrs.get('fail_reason', 'unknown')}")
        front = pareto_front(trials, directions)
        if not front:
            continue
        table = Table(title=f"Pareto set of {study.study_name} (mean ± s.e.m. over seeds)")
        for col in ("trial", "layout", "preset", "seeds", *objectives):
            table.add_column(col, overflow="fold")
        rows = objective_table_rows(front, objectives)
        for row in rows:
            table.add_row(*row)
        _print_table(console, table, rows)
        report = promotion_report(trials, directions, objectives, **_promote_settings(study, rung),
                                  context=studies[min(studies)].get_trials(deepcopy=False))
        noise = f"intervals ±{report.z:g} s.e.m." if report.z > 0 else "exact means"
        console.print(f"promotion ({report.rule}, k={report.k}, {noise}): trials "
                      + (", ".join(str(t.number) for t in report.promoted) or "none"))
        candidates = report.candidates()
        if candidates:
            table = Table(title=f"Not promoted but within noise of the front ({len(candidates)}): cut by k={report.k}")
            for col in ("trial", "layout", "preset", "seeds", *objectives, "note"):
                table.add_column(col, overflow="fold")
            rows = objective_table_rows([e.trial for e in candidates], objectives)
            for row, e in zip(rows, candidates):
                table.add_row(*row, e.note)
            _print_table(console, table, rows)
    return 0


def objective_table_rows(trials: list[Any], objectives: list[str]) -> list[list[str]]:
    """Rows (trial, layout string, preset, seeds, ``mean ± s.e.m.`` per objective) for console tables."""
    from hyla.metrics import format_value
    from hyla.search.rungs import n_seeds, objective_sems
    from hyla.space.layout import Layout

    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        layout = t.user_attrs.get("layout")
        lay = Layout.from_dict(layout).layer_string(group=6) if layout else "?"
        vals = [format_value(n, v) + (f" ± {s:.2g}" if s > 0 else "")
                for n, v, s in zip(objectives, t.values or [], objective_sems(t))]
        rows.append([str(t.number), lay, str(t.user_attrs.get("preset") or ""), str(n_seeds(t)), *vals])
    return rows
