"""Hand-made per-run records as `benchmarks/bench_fidelity.py` writes them, for the fidelity checks and the paper's
findings (tests/analysis/test_fidelity.py, tests/benchmarks/test_bench_fidelity.py)."""

from __future__ import annotations


def record(name: str, mixer: str, n_attn: int, seed: int, budget: int, recall: float) -> dict:
    return {"layout_name": name, "mixer": mixer, "n_attn": n_attn, "attn_share": n_attn / 4, "seed": seed, "budget": budget,
            "variant": "v", "status": "ok", "recall": recall, "recall_levels": {"easy": recall}}


SHARES = {"pure": 0.0, "24:1": 1 / 24, "12:1": 2 / 24, "6:1": 4 / 24, "3:1": 8 / 24}


def grid(recall_of, lm_of, seeds: tuple[int, ...] = (0, 1)) -> list[dict]:
    """Per-seed records of the paper grid's 31 layouts (seed s moves every value by +-0.01), plus a failed one."""
    rows = [(f"{m}-{label}", m, share) for m in ("hgrn", "retnet", "gla", "hgrn2", "deltanet", "gdn")
            for label, share in SHARES.items()] + [("transformer", "transformer", 1.0)]
    recs = [{"layout_name": name, "mixer": m, "attn_share": share, "n_attn": round(share * 24), "seed": s,
             "budget": 1, "variant": "v", "status": "ok", "recall": recall_of(m, share) + 0.01 * (2 * s - 1),
             "lm_val_loss": lm_of(m, share) + 0.001 * (2 * s - 1), "recall_levels": {"easy": 1.0}}
            for name, m, share in rows for s in seeds]
    return recs + [{"layout_name": "gla-1:1", "mixer": "gla", "attn_share": 0.5, "n_attn": 12, "seed": 0,
                    "budget": 1, "variant": "v", "status": "failed", "recall": None, "lm_val_loss": None}]


def paper_like() -> list[dict]:
    weak = {"hgrn": 0.5, "retnet": 0.6}
    return grid(lambda m, s: 0.9 if m == "transformer" else (0.05 if s == 0 else weak.get(m, 1.0) * (0.3 + s)),
                 lambda m, s: 3.0 + 0.01 * s + (0.02 if m == "hgrn" else 0.0))
