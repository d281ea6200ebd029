"""Proxy fidelity checks on per-run records (``benchmarks/bench_fidelity.py``'s JSONL): is a score reproducible,
graded, on trend and consistent across budgets?

Each record is one (layout, seed, budget, variant) run: ``layout_name``, the layout's traits
(`hyla.analysis.findings.layout_traits`: ``mixer``, ``attn_share``, ``n_attn``), ``seed``, ``budget``,
``variant``, ``status``, the scores (``recall``, ``recall_auc``, ``lm_val_loss``) and ``recall_levels``. `analyze`
computes, per budget of one variant (targets in `TARGETS`):

- **reproducible**: mean pairwise Spearman rho between the seeds' rankings of the layouts;
- **graded**: the Transformer's accuracy on the easiest level, and whether the pure linear layouts of different
  mixers tie (their seed means within 2 pooled s.e.m.);
- **trends**: pooled Spearman rho between the number of attention layers and the score over the linear-mixer
  layouts and, per mixer, whether every hybrid's mean beats the pure layout's;
- **consistent**: Spearman rho between the lowest and the highest budget's means;
- **paper_findings**: the paper's four qualitative findings (`hyla.analysis.findings`).

`between_variants` gives the Spearman rho between two variants' rankings per budget (e.g. two corpora). Rank
correlations come from `hyla.analysis.calibrate.spearman`, the product's one Spearman.
"""

from __future__ import annotations

import itertools
import statistics
from collections import defaultdict
from typing import Any

from hyla.analysis.calibrate import spearman
from hyla.analysis.findings import paper_findings

TARGETS = {"reproducible": 0.8, "transformer_easiest": 0.9, "trend_spearman": 0.6, "consistent": 0.8,
           "calibration_seconds": 900.0, "grid_seconds": 1800.0}


def _means(records: list[dict[str, Any]], metric: str = "recall") -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.get(metric) is not None:
            out[r["layout_name"]].append(r[metric])
    return out


def analyze(records: list[dict[str, Any]], variant: str, budgets: list[int], metric: str = "recall",
            flat_tol: float = 0.03, far_factor: float = 1.5) -> dict[str, Any]:
    """The fidelity checks of the module docstring for one variant (on ``metric``; the recall-specific checks,
    Transformer's easiest level and the trend, keep their recall meaning; the paper's findings read both recall
    and LM loss, whatever ``metric``)."""
    ok = [r for r in records if r.get("status") == "ok" and r.get("variant") == variant and r.get(metric) is not None]
    ok = [{**r, "recall": r[metric]} for r in ok]
    out: dict[str, Any] = {"variant": variant, "n_ok": len(ok), "targets": TARGETS}
    for budget in sorted({r["budget"] for r in ok}):
        rs = [r for r in ok if r["budget"] == budget]
        by_seed: dict[int, dict[str, float]] = defaultdict(dict)
        for r in rs:
            by_seed[r["seed"]][r["layout_name"]] = r["recall"]
        pairs = []
        for a, b in itertools.combinations(sorted(by_seed), 2):
            common = sorted(set(by_seed[a]) & set(by_seed[b]))
            rho = spearman([by_seed[a][n] for n in common], [by_seed[b][n] for n in common])
            if rho is not None:
                pairs.append(rho)
        vals = _means(rs)
        table = {n: {"mean": statistics.fmean(v), "sem": statistics.stdev(v) / len(v) ** 0.5 if len(v) > 1 else None,
                     "n": len(v), "values": v} for n, v in vals.items()}
        traits = {r["layout_name"]: r for r in rs}
        linear = [n for n in table if traits[n]["mixer"] not in ("transformer", "mixed")]
        trend = spearman([traits[n]["n_attn"] for n in linear for _ in table[n]["values"]],
                         [v for n in linear for v in table[n]["values"]])
        per_mixer: dict[str, Any] = {}
        for m in sorted({traits[n]["mixer"] for n in linear}):
            names = [n for n in linear if traits[n]["mixer"] == m]
            pure = [n for n in names if traits[n]["n_attn"] == 0]
            hyb = [n for n in names if traits[n]["n_attn"] > 0]
            if pure and hyb:
                per_mixer[m] = {"pure": table[pure[0]]["mean"], "hybrids": {n: table[n]["mean"] for n in hyb},
                                "every_hybrid_above_pure": all(table[n]["mean"] > table[pure[0]]["mean"] for n in hyb)}
        pures = {n: table[n] for n in linear if traits[n]["n_attn"] == 0}
        sems = [t["sem"] for t in pures.values() if t["sem"] is not None]
        noise = 2 * (statistics.fmean(sems) if sems else 0.0)
        pm = sorted(t["mean"] for t in pures.values())
        tr = [r for r in rs if r["mixer"] == "transformer"]
        easiest = [next(iter(r["recall_levels"].values())) for r in tr if r.get("recall_levels")]
        out[f"budget{budget}"] = {
            "layouts": table, "seed_pair_spearman": pairs,
            "reproducible": statistics.fmean(pairs) if pairs else None,
            "transformer_easiest": statistics.fmean(easiest) if easiest else None,
            "pure_linear_spread": (pm[-1] - pm[0]) if pm else None, "pure_noise_2sem": noise,
            "pure_linear_all_tie": (pm[-1] - pm[0] <= noise) if len(pm) > 1 else None,
            "trend_spearman": trend, "per_mixer": per_mixer,
            "every_pure_below_its_hybrids": all(v["every_hybrid_above_pure"] for v in per_mixer.values())
            if per_mixer else None,
            "paper_findings": paper_findings([r for r in records if r.get("variant") == variant
                                              and r.get("budget") == budget], flat_tol, far_factor)}
    bs = sorted({r["budget"] for r in ok})
    if len(bs) >= 2:
        lo, hi = out[f"budget{bs[0]}"]["layouts"], out[f"budget{bs[-1]}"]["layouts"]
        common = sorted(set(lo) & set(hi))
        out["consistent"] = {"budgets": [bs[0], bs[-1]], "n": len(common),
                             "spearman": spearman([lo[n]["mean"] for n in common], [hi[n]["mean"] for n in common])}
    return out


def between_variants(analysis: dict[str, Any]) -> list[dict[str, Any]]:
    """Spearman rho between two variants' seed means over their common layouts, per budget (e.g. how far the
    LM-loss ranking moves when the corpus changes)."""
    out = []
    for a, b in itertools.combinations(sorted(analysis), 2):
        for key in sorted(set(analysis[a]) & set(analysis[b])):
            if not key.startswith("budget"):
                continue
            la, lb = analysis[a][key]["layouts"], analysis[b][key]["layouts"]
            common = sorted(set(la) & set(lb))
            out.append({"variants": [a, b], "budget": key, "n": len(common),
                        "spearman": spearman([la[n]["mean"] for n in common], [lb[n]["mean"] for n in common])})
    return out
