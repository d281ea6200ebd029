"""The paper's four qualitative findings (arXiv 2507.06457), from per-run records of one proxy and budget: a
benchmark's records (``benchmarks/bench_fidelity.py``) or a study's trials (`study_records`, for `hyla analysis
calibrate`).

The records are reduced to one row per layout: the seed means of ``recall`` and of ``lm_val_loss`` (each over the
seeds that have it, so a probe-only proxy still decides findings 1, 3 and 4) and the layout's traits from
`layout_traits`: ``mixer`` (linear kind, ``transformer`` or ``mixed``) and ``attn_share`` (attention layers /
depth; head-wise heads count pro rata). Each finding holds the numbers behind it and ``holds`` True/False, None
when the rows cannot tell (too few layouts, or a metric the proxy did not measure):

1. ``recall_rises_with_attention``: Spearman rho between attention share and recall over the linear-mixer layouts
   (pure + hybrids), pooled and per mixer; holds if the pooled rho > 0 and most mixers have rho > 0.
2. ``lm_loss_flat_across_ratios``: per mixer, relative spread (max - min) / mean of the hybrids' LM loss; holds if
   the largest is <= ``flat_tol`` (default 3 %); the recall spread is recorded next to it for contrast.
3. ``pure_recall_far_worse``: per mixer, pure recall vs the mean of its hybrids; holds if every mixer's hybrids
   beat its pure model and the pooled hybrid mean is >= ``far_factor`` (default 1.5) x the pooled pure mean.
4. ``retnet_hgrn_hybrids_worst``: mixers ranked by mean hybrid recall; holds if RetNet and HGRN are the bottom two.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from hyla.analysis.calibrate import spearman

if TYPE_CHECKING:
    from hyla.analysis.study_data import StudyData

#: the mixers whose hybrids the study found to recall worst (finding 4)
WORST_EXPECTED = ("hgrn", "retnet")
FINDINGS = ("recall_rises_with_attention", "lm_loss_flat_across_ratios", "pure_recall_far_worse",
            "retnet_hgrn_hybrids_worst")


def layout_traits(layout: Any) -> dict[str, Any]:
    """``mixer``, ``attn_share``, ``n_attn``, ``n_layers`` of a hyla Layout (what the analyses group by)."""
    kinds = {spec.mixer for spec in layout.layers if spec.mixer != "attn"}
    whole = sum(1 for spec in layout.layers if spec.mixer == "attn")
    heads = sum(spec.attn_heads / layout.num_heads for spec in layout.layers if spec.mixer != "attn")
    mixer = "transformer" if not kinds else (next(iter(kinds)) if len(kinds) == 1 else "mixed")
    return {"mixer": mixer, "attn_share": (whole + heads) / layout.n_layers, "n_attn": whole,
            "n_layers": layout.n_layers}


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _rel_spread(xs: list[float]) -> float | None:
    m = _mean(xs)
    return (max(xs) - min(xs)) / abs(m) if len(xs) >= 2 and m else None


def layout_means(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per layout name: its traits and the seed means of ``recall`` and ``lm_val_loss`` (None if none)."""
    by_name: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        by_name[r["layout_name"]].append(r)
    return [{"layout_name": name, "mixer": rs[0]["mixer"], "attn_share": rs[0]["attn_share"], "n_seeds": len(rs),
             **{k: _mean([r[k] for r in rs if r.get(k) is not None]) for k in ("recall", "lm_val_loss")}}
            for name, rs in by_name.items()]


def paper_findings(records: list[dict[str, Any]], flat_tol: float = 0.03, far_factor: float = 1.5) -> dict[str, Any]:
    """The four findings (see the module docstring) from the ``ok`` records of one variant and budget."""
    rows = layout_means([r for r in records if r.get("status") == "ok"])
    linear: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["mixer"] not in ("transformer", "mixed"):
            linear[row["mixer"]].append(row)
    linear = dict(sorted(linear.items()))
    recall = {m: [r for r in rs if r["recall"] is not None] for m, rs in linear.items()}
    hybrids = {m: [r for r in rs if 0 < r["attn_share"] < 1] for m, rs in recall.items()}
    pures = {m: [r for r in rs if r["attn_share"] == 0] for m, rs in recall.items()}
    tr = [r for r in rows if r["mixer"] == "transformer"]
    out: dict[str, Any] = {"n_records": len(records), "n_layouts": len(rows), "mixers": list(linear),
                           "transformer": {k: _mean([r[k] for r in tr if r[k] is not None])
                                           for k in ("recall", "lm_val_loss")}}

    # 1. recall vs attention share
    pts = [(r["attn_share"], r["recall"]) for rs in recall.values() for r in rs]
    per = {m: spearman([r["attn_share"] for r in rs], [r["recall"] for r in rs]) for m, rs in recall.items()}
    pooled = spearman([p[0] for p in pts], [p[1] for p in pts])
    known = [v for v in per.values() if v is not None]
    out["recall_rises_with_attention"] = {
        "pooled_spearman": pooled, "n": len(pts), "per_mixer_spearman": per,
        "holds": None if pooled is None else bool(pooled > 0 and sum(v > 0 for v in known) > len(known) / 2)}

    # 2. LM loss nearly flat across ratios (hybrids only)
    lm = {m: _rel_spread([r["lm_val_loss"] for r in rs if 0 < r["attn_share"] < 1 and r["lm_val_loss"] is not None])
          for m, rs in linear.items()}
    rc = {m: (max(r["recall"] for r in rs) - min(r["recall"] for r in rs)) if len(rs) >= 2 else None
          for m, rs in hybrids.items()}
    lm_known = [v for v in lm.values() if v is not None]
    out["lm_loss_flat_across_ratios"] = {
        "per_mixer_rel_spread": lm, "max_rel_spread": max(lm_known) if lm_known else None, "flat_tol": flat_tol,
        "per_mixer_recall_spread": rc, "holds": None if not lm_known else bool(max(lm_known) <= flat_tol)}

    # 3. pure linear recall vs hybrids
    per3: dict[str, Any] = {}
    for m in linear:
        p, h = _mean([r["recall"] for r in pures[m]]), _mean([r["recall"] for r in hybrids[m]])
        if p is not None and h is not None:
            per3[m] = {"pure": p, "hybrid_mean": h, "hybrids_better": h > p}
    pp, hh = _mean([v["pure"] for v in per3.values()]), _mean([v["hybrid_mean"] for v in per3.values()])
    factor = None if pp is None else (math.inf if pp == 0 and hh > 0 else (hh / pp if pp else None))
    out["pure_recall_far_worse"] = {
        "per_mixer": per3, "pooled_pure": pp, "pooled_hybrid": hh, "factor": factor, "far_factor": far_factor,
        "holds": None if not per3 or factor is None else bool(all(v["hybrids_better"] for v in per3.values())
                                                               and factor >= far_factor)}

    # 4. which mixers' hybrids recall worst
    means = {m: _mean([r["recall"] for r in rs]) for m, rs in hybrids.items() if rs}
    ranking = sorted(means, key=lambda m: means[m])
    decidable = len(ranking) >= 3 and all(m in means for m in WORST_EXPECTED)
    out["retnet_hgrn_hybrids_worst"] = {
        "ranking_worst_first": [[m, means[m]] for m in ranking],
        "holds": bool(set(ranking[:2]) == set(WORST_EXPECTED)) if decidable else None}
    return out


def study_records(data: StudyData, rung: int) -> list[dict[str, Any]]:
    """A study's complete trials at ``rung`` as `paper_findings` records: one per seed value, grouped by layout
    key (a layout trained twice, e.g. a reused duplicate, pools its seeds)."""
    out = []
    for t in data.select(rung=rung, complete=True):
        if t.layout is None:
            continue
        recall, lm = t.seed_values("recall"), t.seed_values("lm_loss")
        for i in range(max(len(recall), len(lm))):
            out.append({"layout_name": t.layout_key, **layout_traits(t.layout), "status": "ok",
                        "recall": recall[i] if i < len(recall) else None,
                        "lm_val_loss": lm[i] if i < len(lm) else None})
    return out


def decidable(findings: dict[str, Any]) -> bool:
    """Whether any finding could be decided (``holds`` not None): worth printing."""
    return any(findings[name]["holds"] is not None for name in FINDINGS)


def format_findings(f: dict[str, Any]) -> str:
    """A short human-readable report of `paper_findings`' output."""
    def num(x: Any) -> str:
        return "n/a" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    def per(values: dict[str, Any]) -> str:
        return ", ".join(f"{m} {num(v)}" for m, v in values.items())

    a, b = f["recall_rises_with_attention"], f["lm_loss_flat_across_ratios"]
    c, d = f["pure_recall_far_worse"], f["retnet_hgrn_hybrids_worst"]
    lines = [
        (f"records: {f['n_records']} ({f['n_layouts']} layouts); mixers: {', '.join(f['mixers']) or 'none'}; "
         f"transformer recall {num(f['transformer']['recall'])}"),
        (f"1. recall rises with attention share: {a['holds']} (pooled Spearman {num(a['pooled_spearman'])}, "
         f"n={a['n']}; per mixer {per(a['per_mixer_spearman'])})"),
        (f"2. LM loss nearly flat across ratios: {b['holds']} (max relative spread {num(b['max_rel_spread'])} vs "
         f"tolerance {b['flat_tol']}; per mixer {per(b['per_mixer_rel_spread'])})"),
        (f"3. pure linear recall far worse than hybrids: {c['holds']} (pure {num(c['pooled_pure'])} vs hybrids "
         f"{num(c['pooled_hybrid'])}, factor {num(c['factor'])} vs {c['far_factor']})"),
        f"4. RetNet/HGRN hybrids recall worst: {d['holds']} (worst first: {per(dict(d['ranking_worst_first']))})",
    ]
    return "\n".join(lines)
