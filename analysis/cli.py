"""`hyla analysis pareto|report|export|calibrate`: thin wrappers over the analysis library.

STUDY everywhere is a storage URL (sqlite:///..., postgresql://...), a journal file, a run directory holding
``study.journal``, or the study YAML that ran the search (`hyla.search.locate`, as `hyla search status` takes it;
nothing is created). ``--study NAME`` picks one study when a storage holds
several. ``pareto`` and ``report`` write into the study's run directory unless ``--out`` says otherwise (the
current directory when a database holds the study and its run directory is not here).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.metrics import COST_AXES, SCORE_AXES
from hyla.search.locate import STUDY_HELP



def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", metavar="STUDY", help=STUDY_HELP)
    p.add_argument("--study", dest="study_name", default=None, help="study name when the storage holds several")


def add_parser(subparsers: Any, name: str, help_text: str) -> None:
    """Register `hyla analysis` and its subcommands."""
    p = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = p.add_subparsers(dest="analysis_command", metavar="SUBCOMMAND")

    pa = sub.add_parser("pareto", help="Pareto-front plot of 2 or 3 metrics (HTML or PNG)")
    _study_args(pa)
    pa.add_argument("--x", default="memory_bytes", help="x metric (default memory_bytes)")
    pa.add_argument("--y", default="recall", help="y metric (default recall)")
    pa.add_argument("--z", default=None, help="optional third metric: 3-D plot")
    pa.add_argument("--rung", type=int, default=None, help="only this rung (default: all, dropdown)")
    pa.add_argument("--out", default=None, help="output file: .html (self-contained) or .png (default: "
                                                "pareto.html in the study's run directory)")
    pa.set_defaults(func=_pareto)

    rp = sub.add_parser("report", help="one self-contained HTML report of a study")
    _study_args(rp)
    rp.add_argument("--out", default=None, help="output HTML file (default: report.html in the study's run "
                                                "directory)")
    rp.set_defaults(func=_report)

    ex = sub.add_parser("export", help="write layout.yaml, the HF model (config, weights from --checkpoint), fla's "
                                       "model where fla expresses the layout, and the full-run spec")
    ex.add_argument("study", metavar="STUDY", nargs="?", default=None,
                    help=STUDY_HELP + " (optional with --checkpoint)")
    ex.add_argument("--study", dest="study_name", default=None, help="study name when the storage holds several")
    which = ex.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, default=None, help="trial number")
    which.add_argument("--pick", default=None, help="knee | best-recall | min-kv | best-loss")
    ex.add_argument("--rung", type=int, default=None, help="rung (default: the highest one with the trial/complete)")
    ex.add_argument("--scale", default="340m", help="full-run scale for full_run.yaml (340m or 1.3b)")
    ex.add_argument("--checkpoint", default=None,
                    help="a `hyla train` run dir, checkpoint dir or saved model dir: export its trained weights "
                         "(hyla's and fla's names)")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    ex.set_defaults(func=_export)

    ca = sub.add_parser("calibrate", help="rank agreement (Spearman, Kendall + bootstrap CIs) with a reference, and "
                                          "the paper's four findings on the study's trials")
    _study_args(ca)
    ca.add_argument("--reference", default=None, help="CSV: column 'layout' (preset or YAML) + metric columns")
    ca.add_argument("--reference-rung", type=int, default=None,
                    help="use this rung of the study as the reference (multi-fidelity consistency; --rung "
                         "defaults to the rung below)")
    ca.add_argument("--rung", type=int, default=None, help="rung to compare (default: the one with most matches; "
                                                           "without a reference: the top rung)")
    ca.add_argument("--flat-tol", type=float, default=0.03, help="paper finding 2: max relative LM-loss spread")
    ca.add_argument("--far-factor", type=float, default=1.5, help="paper finding 3: hybrid/pure recall factor")
    ca.add_argument("--out", default="calibration", help="output directory (calibration.json, calibration.html)")
    ca.set_defaults(func=_calibrate)
    pl = sub.add_parser("placement", help="which K layers of a trained Transformer (a `hyla train` checkpoint or a "
                                          "local HF Llama directory) keep attention: per-layer importance and a "
                                          "beam search on a placement supernet")
    pl.add_argument("model", metavar="MODEL", help="`hyla train` run/checkpoint/model dir, or an HF Llama directory")
    pl.add_argument("--attention-layers", type=int, required=True, help="K: attention layers to keep")
    pl.add_argument("--mixer", default="gdn", help="linear kind of the other layers (default gdn)")
    pl.add_argument("--beam", type=int, default=3, help="beam width (1 = greedy; default 3, as PostNAS)")
    pl.add_argument("--objective", default="recall", help="recall (ties by KL) or kl (default recall)")
    pl.add_argument("--levels", default="retrofit-tiny", help="recall level set (default retrofit-tiny)")
    pl.add_argument("--seq-len", type=int, default=128, help="row length (default 128)")
    pl.add_argument("--transfer-steps", type=int, default=300, help="stage-1 attention-transfer steps")
    pl.add_argument("--supernet-steps", type=int, default=200, help="supernet distillation steps (0: stage 1 only)")
    pl.add_argument("--eval-examples", type=int, default=128, help="held-out examples per recall level")
    pl.add_argument("--device", default="auto", help="auto, cpu or cuda")
    pl.add_argument("--cache-dir", default=None, help="cache (default $HYLA_CACHE_DIR or ~/.cache/hyla)")
    pl.add_argument("--seed", type=int, default=0, help="supernet seed")
    pl.add_argument("--out", default="placement", help="output directory (layout.yaml, placement.json, report.html)")
    pl.set_defaults(func=_placement)
    p.set_defaults(func=lambda a: (p.print_help(), 0)[1])


def search_pareto_html(cfg: Any, console: Any) -> None:
    """Write ``pareto.html`` into a finished search's run directory (`hyla search run`; hyla.cli hands it over).

    Args:
        cfg: the search's ``StudyConfig``.
        console: a rich console for the one-line outcome. Optional: a missing plotting stack or any plotting
            error is printed as a note, never raised (it must not fail a finished search).
    """
    try:
        from hyla.analysis.plots import pareto_figure, write_html
        from hyla.analysis.study_data import load_study
    except ImportError as e:
        console.print(f"(Pareto HTML skipped: hyla.analysis.plots not available: {e})")
        return
    axes = [o for o in COST_AXES if o in cfg.objectives][:1]
    axes += [o for o in SCORE_AXES if o in cfg.objectives][:1]
    if len(axes) < 2:
        axes = list(cfg.objectives[:2])
    if len(axes) < 2:
        console.print("(Pareto HTML skipped: it needs two objectives)")
        return
    try:
        data = load_study(cfg.storage_url(), cfg.name)
        path = write_html(pareto_figure(data, axes=tuple(axes)), cfg.run_path / "pareto.html")
        console.print(f"Pareto plot: {path}")
    except Exception as e:  # a plotting problem must not fail a finished search
        console.print(f"(Pareto HTML skipped: {type(e).__name__}: {e})")


def _load(args: argparse.Namespace) -> Any:
    from hyla.analysis.study_data import load_study

    return load_study(args.study, args.study_name)


def _pareto(args: argparse.Namespace) -> int:
    from hyla.analysis.plots import pareto_figure, write_html, write_png

    if args.out is not None and Path(args.out).suffix not in (".html", ".png"):
        raise ConfigError(f"--out: {args.out!r} must end in .html or .png")
    data = _load(args)
    out = Path(args.out) if args.out is not None else data.output_path("pareto.html")
    axes = (args.x, args.y) + ((args.z,) if args.z else ())
    fig = pareto_figure(data, axes=axes, rungs=None if args.rung is None else [args.rung])
    path = write_png(fig, out) if out.suffix == ".png" else write_html(fig, out)
    print(f"wrote {path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from hyla.analysis.report import write_report

    data = _load(args)
    print(f"wrote {write_report(data, args.out if args.out is not None else data.output_path('report.html'))}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from hyla.analysis.export import export_checkpoint, export_trial, find_trial, loading_instructions
    from hyla.analysis.pareto import PICKS, pick, pick_description

    if args.pick is not None and args.pick not in PICKS:
        raise ConfigError(f"--pick: {args.pick!r} is not allowed; expected one of {', '.join(PICKS)}")
    if args.scale not in ("340m", "1.3b"):
        raise ConfigError(f"--scale: {args.scale!r} is not allowed; expected one of 340m, 1.3b")
    if args.study is None:
        if args.checkpoint is None:
            raise ConfigError("STUDY: missing; give a study (with --trial or --pick) or --checkpoint RUN_DIR")
        if args.trial is not None or args.pick is not None:
            raise ConfigError("--trial/--pick: need STUDY (the study the trial belongs to)")
        res = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite)
        print(f"checkpoint {args.checkpoint} ({res.layout.layer_string()}) -> {res.out_dir}")
    else:
        if args.trial is None and args.pick is None:
            raise ConfigError("--trial/--pick: one is required with STUDY (a trial number, or knee | best-recall "
                              "| min-kv | best-loss)")
        data = _load(args)
        trial = (find_trial(data, args.trial, args.rung) if args.trial is not None
                 else pick(data, args.pick, args.rung))
        res = export_trial(data, trial, args.out, scale=args.scale, overwrite=args.overwrite,
                           checkpoint=args.checkpoint, picked=args.pick)
        why = f" ({args.pick}: {pick_description(data, args.pick)})" if args.pick is not None else ""
        print(f"trial {trial.number} (rung {trial.rung}) {trial.layout_string}{why} -> {res.out_dir}")
    for f in res.files:
        print(f"  {f.name}{'/' if f.is_dir() else ''}")
    for n in res.notes:
        print(f"  note: {n}")
    print("load it:")
    for line in loading_instructions(res):
        print(f"  {line}")
    return 0


def _placement(args: argparse.Namespace) -> int:
    from hyla.analysis.placement import PlacementRequest, run_placement

    req = PlacementRequest(model=args.model, attention_layers=args.attention_layers, mixer=args.mixer, beam=args.beam,
                           objective=args.objective, levels=args.levels, seq_len=args.seq_len,
                           transfer_steps=args.transfer_steps, supernet_steps=args.supernet_steps,
                           eval_examples=args.eval_examples, out=args.out, cache_dir=args.cache_dir,
                           device=args.device, seed=args.seed)
    record = run_placement(req)
    for name, c in record["candidates"].items():
        s = c["scores"]
        print(f"{name:10s} attention at {c['attention']}: recall {s['recall']:.3f}, KL {s['kl_to_teacher']:.4f}")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from hyla.analysis.calibrate import calibrate, write_calibration
    from hyla.analysis.findings import format_findings, paper_findings, study_records

    data = _load(args)
    results = []
    if args.reference is None and args.reference_rung is None:  # the paper's findings alone
        rung = data.top_rung() if args.rung is None else args.rung
        if rung not in data.rungs:
            raise ConfigError(f"--rung: {rung} is not a rung of study {data.name!r}; rungs: {data.rungs}")
    else:
        rung, results = calibrate(data, args.reference, rung=args.rung, reference_rung=args.reference_rung)
    for r in results:
        print(f"{r.metric} (rung {rung}, n={r.n}): Spearman {r.spearman:.3f} "
              f"[{r.spearman_ci[0]:.3f}, {r.spearman_ci[1]:.3f}], Kendall {r.kendall:.3f} "
              f"[{r.kendall_ci[0]:.3f}, {r.kendall_ci[1]:.3f}]")
    findings = paper_findings(study_records(data, rung), args.flat_tol, args.far_factor)
    print(f"the paper's findings on rung {rung}:\n" + format_findings(findings))
    for f in write_calibration(data, rung, results, args.out, findings):
        print(f"wrote {f}")
    return 0
