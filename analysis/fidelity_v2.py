"""Fidelity v2 (issue 31): does a recall proxy family rank layouts reproducibly, graded, on trend, as the paper
does, consistently across budgets and fast? Read from ``benchmarks/results/fidelity_v2*.jsonl``.

Records (one JSON line per proxy family, layout, seed and budget; written by ``benchmarks/bench_fidelity_v2.py``):
    ``proxy`` (family), ``layout_name``, ``layout_key``, ``mixer`` (linear kind, ``transformer`` or ``mixed``),
    ``n_attn`` (layers with softmax heads), ``n_layers``, ``seed``, ``budget`` (x the rung-0 steps), ``status``
    (``ok`` or ``failed``), ``recall``, ``levels`` (level -> score), ``floor`` (the score of guessing one of the
    context's values: the chance/plateau level), ``budget_steps``, ``wall_s``, ``shared`` (costs shared by many
    records, key -> seconds, counted once), ``machine``, ``scale``, ``level_set``, ``time``.

Checks per family (`family_checks`), on the seed means of each layout at each budget:
    - **reproducible**: the mean over seed pairs of Spearman's rho between the seeds' layout rankings (>= 0.8);
    - **graded**: at most 20 % of the layouts within noise of the floor (mean <= floor + max(2 s.e.m.,
      ``min_noise``)), and no two pure layouts of different mixers tie (|difference| <= max(2 pooled s.e.m.,
      ``min_noise``));
    - **on trend**: the mean over mixers (those with >= 3 attention counts) of Spearman's rho between attention
      layers and recall (>= 0.7), and each mixer's pure layout below the mean of its hybrids;
    - **paper findings**: among the linear hybrids (ranked by mean, average ranks for ties, 1 = best), hgrn2 and
      gdn at 3:1 and 6:1 in the top third (mid-rank <= n/3), and every retnet and hgrn hybrid in the bottom
      third (mid-rank > n - n/3);
    - **consistent**: Spearman's rho between the layouts' means at the rung-0 budget and at 4x it (else the
      largest budget) (>= 0.8);
    - **fast**: seconds per budget (records' ``wall_s`` plus each distinct ``shared`` cost once) and the
      machine; on a GPU the rung-0 total of the calibration set is held to 15 minutes.
The checks of every family are shown beside those of ``count-attn``, a pseudo-family whose score is the number
of attention layers (computed from the layouts in the file, one record per layout, seed and budget found): a
family that does not beat it adds nothing.

Public API (stable): ``COUNT_ATTN``, ``TARGETS``, ``read_records(path)``, ``count_attention_records(records)``,
``family_checks(records, min_noise=0.01)``, ``analyze(records, min_noise=0.01)``, ``format_report(analysis)``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from hyla.analysis.calibrate import spearman

COUNT_ATTN = "count-attn"
TARGETS = {"reproducible": 0.8, "graded_floor_share": 0.2, "trend_spearman": 0.7, "consistent": 0.8,
           "gpu_rung0_seconds": 900.0}
#: the paper's named findings: (mixers, ratios) that must rank in the top / bottom third of the linear hybrids
TOP_THIRD = (("hgrn2", "gdn"), (3, 6))
BOTTOM_THIRD = ("retnet", "hgrn")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (a torn last line from a killed run is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def count_attention_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``count-attn`` pseudo-family: recall = attention layers, one record per layout, seed and budget."""
    keys = {(r["layout_name"], r["seed"], r["budget"]): r for r in records if r.get("status") == "ok"}
    return [{"proxy": COUNT_ATTN, "status": "ok", "layout_name": n, "seed": s, "budget": b, "recall": float(r["n_attn"]),
             "floor": 0.0, "levels": {}, "wall_s": 0.0, "shared": {}, "mixer": r["mixer"], "n_attn": r["n_attn"],
             "n_layers": r["n_layers"], "machine": r.get("machine")} for (n, s, b), r in sorted(keys.items())]


def _table(rs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    vals: dict[str, list[float]] = defaultdict(list)
    traits: dict[str, dict[str, Any]] = {}
    for r in rs:
        vals[r["layout_name"]].append(float(r["recall"]))
        traits[r["layout_name"]] = r
    return {n: {"mean": statistics.fmean(v), "sem": statistics.stdev(v) / math.sqrt(len(v)) if len(v) > 1 else 0.0,
                "n": len(v), "floor": traits[n].get("floor", 0.0), "mixer": traits[n]["mixer"],
                "n_attn": traits[n]["n_attn"], "n_layers": traits[n]["n_layers"]} for n, v in vals.items()}


def _reproducible(rs: list[dict[str, Any]]) -> dict[str, Any]:
    by_seed: dict[int, dict[str, float]] = defaultdict(dict)
    for r in rs:
        by_seed[r["seed"]][r["layout_name"]] = float(r["recall"])
    rhos = {}
    for a, b in itertools.combinations(sorted(by_seed), 2):
        common = sorted(set(by_seed[a]) & set(by_seed[b]))
        rhos[f"{a}-{b}"] = spearman([by_seed[a][n] for n in common], [by_seed[b][n] for n in common])
    known = [v for v in rhos.values() if v is not None]
    value = statistics.fmean(known) if known else None
    return {"value": value, "pairs": rhos, "pass": None if value is None else value >= TARGETS["reproducible"]}


def _graded(table: dict[str, dict[str, Any]], min_noise: float) -> dict[str, Any]:
    at_floor = sorted(n for n, t in table.items() if t["mean"] <= t["floor"] + max(2 * t["sem"], min_noise))
    share = len(at_floor) / len(table) if table else None
    pures = {n: t for n, t in table.items() if t["n_attn"] == 0 and t["mixer"] not in ("transformer", "mixed")}
    ties = []
    for a, b in itertools.combinations(sorted(pures), 2):
        ta, tb = pures[a], pures[b]
        if ta["mixer"] != tb["mixer"] and abs(ta["mean"] - tb["mean"]) <= max(
                2 * math.hypot(ta["sem"], tb["sem"]), min_noise):
            ties.append([a, b])
    ok = None if share is None else share <= TARGETS["graded_floor_share"] and not ties
    return {"at_floor": at_floor, "floor_share": share, "pure_ties": ties, "n_pure": len(pures), "pass": ok}


def _on_trend(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {}
    for m in sorted({t["mixer"] for t in table.values()} - {"transformer", "mixed"}):
        rows = [t for t in table.values() if t["mixer"] == m]
        rho = spearman([t["n_attn"] for t in rows], [t["mean"] for t in rows]) \
            if len({t["n_attn"] for t in rows}) >= 3 else None
        pure = [t["mean"] for t in rows if t["n_attn"] == 0]
        hyb = [t["mean"] for t in rows if 0 < t["n_attn"] < t["n_layers"]]
        below = pure[0] < statistics.fmean(hyb) if pure and hyb else None
        per[m] = {"spearman": rho, "pure_below_hybrids": below}
    rhos = [v["spearman"] for v in per.values() if v["spearman"] is not None]
    value = statistics.fmean(rhos) if rhos else None
    belows = [v["pure_below_hybrids"] for v in per.values() if v["pure_below_hybrids"] is not None]
    ok = None if value is None else value >= TARGETS["trend_spearman"] and all(belows)
    return {"value": value, "per_mixer": per, "every_pure_below": all(belows) if belows else None, "pass": ok}


def _midranks(values: dict[str, float]) -> dict[str, float]:
    """Rank 1 = highest; ties share their average rank."""
    order = sorted(values, key=lambda n: -values[n])
    out, i = {}, 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _findings(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    hyb = {n: t for n, t in table.items() if t["mixer"] not in ("transformer", "mixed") and 0 < t["n_attn"] < t["n_layers"]}
    ranks = _midranks({n: t["mean"] for n, t in hyb.items()})
    n = len(hyb)
    top = {name: ranks[name] <= n / 3 for name, t in hyb.items() if t["mixer"] in TOP_THIRD[0]
           and t["n_layers"] / t["n_attn"] in TOP_THIRD[1]}
    bottom = {name: ranks[name] > n - n / 3 for name, t in hyb.items() if t["mixer"] in BOTTOM_THIRD}
    return {"n_hybrids": n, "midranks": ranks,
            "top_third": {"layouts": top, "pass": all(top.values()) if top else None},
            "bottom_third": {"layouts": bottom, "pass": all(bottom.values()) if bottom else None},
            "pass": None if not top and not bottom else all(top.values()) and all(bottom.values())}


def _fast(rs: list[dict[str, Any]]) -> dict[str, Any]:
    shared: dict[str, float] = {}
    for r in rs:
        shared.update(r.get("shared") or {})
    total = sum(float(r.get("wall_s") or 0.0) for r in rs) + sum(shared.values())
    machine = next((r.get("machine") for r in rs if r.get("machine")), None) or {}
    return {"seconds": total, "records_s": total - sum(shared.values()), "shared_s": sum(shared.values()),
            "device": machine.get("gpu") or machine.get("device") or "unknown"}


def family_checks(records: list[dict[str, Any]], min_noise: float = 0.01) -> dict[str, Any]:
    """Every check of the module docstring for the ``ok`` records of one family."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("recall") is not None]
    budgets = sorted({r["budget"] for r in ok})
    out: dict[str, Any] = {"n_records": len(ok), "n_failed": sum(r.get("status") != "ok" for r in records),
                           "budgets": {}}
    for b in budgets:
        rs = [r for r in ok if r["budget"] == b]
        table = _table(rs)
        out["budgets"][b] = {"layouts": table, "reproducible": _reproducible(rs), "graded": _graded(table, min_noise),
                             "on_trend": _on_trend(table), "findings": _findings(table), "fast": _fast(rs)}
    if budgets:
        b0 = budgets[0]
        b1 = 4 * b0 if 4 * b0 in budgets else budgets[-1]
        rho, common = None, []
        if b1 != b0:
            lo, hi = out["budgets"][b0]["layouts"], out["budgets"][b1]["layouts"]
            common = sorted(set(lo) & set(hi))
            rho = spearman([lo[n]["mean"] for n in common], [hi[n]["mean"] for n in common])
        out["consistent"] = {"budgets": [b0, b1], "value": rho, "n_layouts": len(common),
                             "pass": None if rho is None else rho >= TARGETS["consistent"]}
        fast = out["budgets"][b0]["fast"]
        gpu = fast["device"] not in ("cpu", "unknown")
        out["fast"] = {**fast, "budget": b0, "target_s": TARGETS["gpu_rung0_seconds"] if gpu else None,
                       "pass": fast["seconds"] <= TARGETS["gpu_rung0_seconds"] if gpu else None}
    return out


def analyze(records: list[dict[str, Any]], min_noise: float = 0.01) -> dict[str, Any]:
    """`family_checks` of every family in ``records`` and of ``count-attn``."""
    families = sorted({r["proxy"] for r in records if r.get("proxy") != COUNT_ATTN})
    out = {f: family_checks([r for r in records if r.get("proxy") == f], min_noise) for f in families}
    out[COUNT_ATTN] = family_checks(count_attention_records([r for r in records if r.get("proxy") != COUNT_ATTN]),
                                    min_noise)
    return out


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "PASS" if x else "FAIL"
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _ties(graded: dict[str, Any]) -> str:
    n = graded["n_pure"]
    ties = [" ~ ".join(t) for t in graded["pure_ties"]]
    shown = ", ".join(ties[:3]) + (", ..." if len(ties) > 3 else "")
    return f"{len(ties)} of {n * (n - 1) // 2} pairs of pure layouts tie" + (f" ({shown})" if ties else "")


def format_report(analysis: dict[str, Any]) -> str:
    """Per family: the checks with their numbers and PASS/FAIL, and the layouts' means at the rung-0 budget."""
    checks = ("reproducible", "graded", "on_trend", "findings", "consistent", "fast")
    lines = [f"{'family':14s} " + " ".join(f"{c:>12s}" for c in checks)]
    for fam, a in analysis.items():
        if a["budgets"]:
            c0 = a["budgets"][min(a["budgets"])]
            got = [c0[c]["pass"] for c in checks[:4]] + [a["consistent"]["pass"], a["fast"]["pass"]]
            lines.append(f"{fam:14s} " + " ".join(f"{_fmt(v):>12s}" for v in got))
    for fam, a in analysis.items():
        if not a["budgets"]:
            lines.append(f"== {fam}: no ok records")
            continue
        b0 = min(a["budgets"])
        c = a["budgets"][b0]
        rep, gr, tr, fi = c["reproducible"], c["graded"], c["on_trend"], c["findings"]
        lines += [
            f"== {fam}: {a['n_records']} records ({a['n_failed']} failed), budgets {sorted(a['budgets'])}",
            f"  reproducible  {_fmt(rep['pass'])}  mean seed-pair Spearman {_fmt(rep['value'])} (>= 0.8)",
            f"  graded        {_fmt(gr['pass'])}  {len(gr['at_floor'])}/{len(c['layouts'])} layouts at the floor "
            f"({_fmt(gr['floor_share'])}, <= 0.2); {_ties(gr)}",
            f"  on trend      {_fmt(tr['pass'])}  mean Spearman over mixers {_fmt(tr['value'])} (>= 0.7): "
            + ", ".join(f"{m} {_fmt(v['spearman'])}" for m, v in tr["per_mixer"].items())
            + f"; every pure below its hybrids {_fmt(tr['every_pure_below'])}",
            f"  findings      {_fmt(fi['pass'])}  of {fi['n_hybrids']} linear hybrids, top third: "
            + (", ".join(f"{n} {'yes' if v else 'no'}" for n, v in fi["top_third"]["layouts"].items()) or "n/a")
            + "; bottom third: "
            + (", ".join(f"{n} {'yes' if v else 'no'}" for n, v in fi["bottom_third"]["layouts"].items()) or "n/a"),
            f"  consistent    {_fmt(a['consistent']['pass'])}  Spearman budget {a['consistent']['budgets'][0]} vs "
            f"{a['consistent']['budgets'][1]}: {_fmt(a['consistent']['value'])} (>= 0.8) over "
            f"{a['consistent'].get('n_layouts', 0)} layouts",
            f"  fast          {_fmt(a['fast']['pass'])}  " + "; ".join(
                f"budget {b}: {v['fast']['seconds']:.0f} s ({v['fast']['shared_s']:.0f} s shared)"
                for b, v in sorted(a["budgets"].items())) + f" on {a['fast']['device']}",
        ]
        for b, v in sorted(a["budgets"].items())[1:]:  # the larger budgets' own checks (seeds may be fewer)
            lines.append(f"  at budget {b}: reproducible {_fmt(v['reproducible']['value'])}, graded "
                         f"{_fmt(v['graded']['pass'])} ({len(v['graded']['at_floor'])} at the floor, "
                         f"{len(v['graded']['pure_ties'])} pure ties), on trend {_fmt(v['on_trend']['pass'])} "
                         f"({_fmt(v['on_trend']['value'])}), findings {_fmt(v['findings']['pass'])}")
        names = sorted(c["layouts"], key=lambda n: -c["layouts"][n]["mean"])
        lines.append("  layouts, mean ± s.e.m. over seeds (n) at budget " + ", ".join(map(str, sorted(a["budgets"])))
                     + f"; floor {c['layouts'][names[0]]['floor']:.3f}:")
        for name in names:
            cells = [f"{t['mean']:.3f} ± {t['sem']:.3f} ({t['n']})" for t in
                     (a["budgets"][b]["layouts"].get(name) for b in sorted(a["budgets"])) if t is not None]
            lines.append(f"    {name:16s} " + "   ".join(cells))
    return "\n".join(lines)
