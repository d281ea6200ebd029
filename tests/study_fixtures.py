"""Small real Optuna studies written the way the search package stores them (ARCHITECTURE.md storage contract).

Used by tests/analysis/ and tests/search/test_rungs_noise.py (tested in tests/analysis/test_study_fixtures.py). Params and memory come from hyla.space.cost (exact), recall and
loss from a seeded formula that rewards softmax heads, so fronts have a meaningful shape.
"""

from __future__ import annotations

import random
import statistics
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend

from hyla.space.cost import inference_memory, param_count
from hyla.space.layout import Layout

CONTEXT = 256
OBJECTIVES = [{"name": "lm_loss", "direction": "minimize"}, {"name": "recall", "direction": "maximize"},
              {"name": "memory_bytes", "direction": "minimize"}]
#: (layers, preset name or None); 4 layers at d_model 32.
LAYOUTS: list[tuple[list[str], str | None]] = [
    (["gla", "gla", "gla", "gla"], "gla-pure@test"),
    (["gla", "gla", "gla", "attn"], "gla-3:1@test"),
    (["gla", "attn", "gla", "attn"], None),
    (["attn", "attn", "attn", "attn"], "transformer@test"),
    (["gdn", "gdn", "gdn", "attn"], None),
    (["gla", "gla+a1", "gla", "gla+a1@64"], None),
    (["hgrn2", "hgrn2", "attn@64", "attn"], None),
    (["retnet", "retnet", "retnet", "retnet"], None),
]


def tiny_layout(layers: list[str], name: str = "") -> Layout:
    return Layout(layers=tuple(layers), d_model=32, vocab_size=64, mlp_hidden=64, num_heads=2, name=name)


def costs(layout: Layout) -> dict[str, Any]:
    """Exact params/KV/state bytes from the space package (the numbers a real proxy run records)."""
    pc = param_count(layout)
    mem = inference_memory(layout, CONTEXT)
    return {"params": int(pc.total), "non_embedding_params": int(pc.non_embedding),
            "kv_bytes": int(mem.kv_bytes), "state_bytes": int(mem.total_bytes), "context": CONTEXT}


def fake_result(layout: Layout, rung: int, rng: random.Random) -> dict[str, Any]:
    """A plausible ProxyResult dict: recall grows with the attention share, longer rungs lower the loss."""
    share = layout.attention_share
    recall = min(1.0, 0.1 + 0.8 * share + rng.uniform(-0.05, 0.05) + 0.05 * rung)
    loss = 3.2 - 0.3 * share - 0.4 * rung + rng.uniform(-0.05, 0.05)
    return {"status": "ok", "fail_reason": None, "lm_val_loss": loss, "recall": recall,
            "recall_tasks": {"mqar": recall}, "tokens_per_s": 1000.0 * (1 + rng.random()), **costs(layout)}


def build_study(tmp_path: Path, rung_mode: str = "studies", name: str = "toy", seed: int = 0) -> Path:
    """Write a 2-rung study to ``tmp_path/run/study.journal`` and return the journal path.

    Rung 0: every layout of LAYOUTS plus one failed trial; the ``retnet`` layout violates a memory constraint.
    Rung 1: the rung-0 Pareto trials re-run (parent links). ``rung_mode``: ``studies`` = rung studies named
    ``<name>/rung<r>`` (the search package's choice); ``attr`` = one study, rung as a trial user attr.
    """
    rng = random.Random(seed)
    path = tmp_path / "run" / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    directions = [o["direction"] for o in OBJECTIVES]
    config = {"name": name, "objectives": [o["name"] for o in OBJECTIVES], "context": CONTEXT}

    def new_study(study_name: str) -> optuna.Study:
        s = optuna.create_study(study_name=study_name, storage=storage, directions=directions)
        s.set_user_attr("config", config)
        s.set_user_attr("objectives", OBJECTIVES)
        s.set_user_attr("space_key", "test-space")
        return s

    def tell(study: optuna.Study, layout: Layout, rung: int, preset: str | None, parent: int | None,
             fail: bool = False) -> optuna.trial.FrozenTrial:
        t = study.ask()
        t.set_user_attr("layout", layout.to_dict())
        t.set_user_attr("layout_key", layout.key())
        t.set_user_attr("rung", rung)
        t.set_user_attr("parent", parent)
        if preset:
            t.set_user_attr("preset", preset)
        res = fake_result(layout, rung, rng)
        t.set_constraint("memory", -1.0 if layout.layers[0].mixer != "retnet" else 1.0)
        if fail:
            res.update(status="diverged", fail_reason="loss is nan at step 12", lm_val_loss=None, recall=None)
            t.set_user_attr("result", res)
            t.set_user_attr("fail_reason", "diverged: loss is nan at step 12")
            study.tell(t, state=optuna.trial.TrialState.FAIL)
        else:
            t.set_user_attr("result", res)
            study.tell(t, [res["lm_val_loss"], res["recall"], res["state_bytes"]])
        return study.trials[t.number]

    s0 = new_study(f"{name}/rung0" if rung_mode == "studies" else name)
    done = [tell(s0, tiny_layout(l, p or ""), 0, p, None) for l, p in LAYOUTS]
    tell(s0, tiny_layout(["deltanet"] * 4), 0, None, None, fail=True)
    feasible = [t for t in done if t.constraints["memory"] <= 0]
    front = [t for t in feasible if not any(
        all((o.values[i] <= t.values[i]) if d == "minimize" else (o.values[i] >= t.values[i])
            for i, d in enumerate(directions)) and o.values != t.values for o in feasible)]
    s1 = new_study(f"{name}/rung1") if rung_mode == "studies" else s0
    for t in front[:3]:
        lay = Layout.from_dict(t.user_attrs["layout"])
        tell(s1, lay, 1, t.user_attrs.get("preset"), t.number)
    return path


#: Hand-made values for `build_noise_study` rung 0: (layers, recall, LM loss): lists = one value per seed; floats =
#: an old-style single-seed trial without any seed attrs. Sorted by memory the front is rows 0, 1, 2, 3; rows 4
#: and 5 are dominated. Neighbour verdicts (Welch, p < 0.05): 0->1 recall yes, loss no; 1->2 recall no, loss yes;
#: 2->3 both yes.
NOISE_ROWS: list[tuple[list[str], list[float] | float, list[float] | float]] = [
    (["gla", "gla", "gla", "gla"], [0.20, 0.22, 0.21], [3.10, 3.12, 3.11]),
    (["gla", "gla", "gla", "attn"], [0.60, 0.62, 0.61], [3.11, 3.09, 3.13]),
    (["gla", "attn", "gla", "attn"], [0.60, 0.66, 0.63], [3.00, 3.01, 3.02]),
    (["attn", "attn", "attn", "attn"], [0.95, 0.96, 0.97], [2.90, 2.91, 2.92]),
    (["gdn", "gdn", "gdn", "attn"], [0.30, 0.31, 0.32], [3.30, 3.31, 3.32]),
    (["retnet", "retnet", "retnet", "retnet"], 0.15, 3.5),
]
#: Rung 1 of `build_noise_study`: rows 1 and 2 again, single seed (both on the front).
NOISE_ROWS_RUNG1: list[tuple[list[str], float, float]] = [(NOISE_ROWS[1][0], 0.70, 2.80),
                                                         (NOISE_ROWS[2][0], 0.75, 2.70)]


def seeded_result(layout: Layout, recall: list[float], loss: list[float]) -> dict[str, Any]:
    """A ProxyResult dict of a multi-seed run: means, per-seed values, sems (sample sd / sqrt(n)) and seeds."""
    train = [v + 0.05 for v in loss]
    per_seed = {"recall": recall, "lm_val_loss": loss, "train_loss": train}
    sem = {k: statistics.stdev(v) / len(v) ** 0.5 for k, v in per_seed.items()}
    return {"status": "ok", "fail_reason": None, "recall": statistics.fmean(recall),
            "lm_val_loss": statistics.fmean(loss), "train_loss": statistics.fmean(train), "seed_values": per_seed,
            "sem": sem, "seeds": list(range(len(recall))), "recall_tasks": {"mqar": statistics.fmean(recall)},
            "tokens_per_s": 1000.0, **costs(layout)}


def build_noise_study(tmp_path: Path, name: str = "noisy") -> Path:
    """A 2-rung study whose rung-0 trials carry seed spreads (`NOISE_ROWS`) as the search stores them.

    Rung 0 trials: user attrs ``objective_sem`` (objective order; memory 0.0) and ``n_seeds``, results with
    ``seed_values``/``sem``/``seeds``. Rung 1: `NOISE_ROWS_RUNG1`, old-style single-seed trials.
    """
    path = tmp_path / "run" / "study.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    for rung, rows in ((0, NOISE_ROWS), (1, NOISE_ROWS_RUNG1)):
        s = optuna.create_study(study_name=f"{name}/rung{rung}", storage=storage,
                                directions=[o["direction"] for o in OBJECTIVES])
        s.set_user_attr("config", {"name": name, "objectives": [o["name"] for o in OBJECTIVES], "context": CONTEXT})
        s.set_user_attr("objectives", OBJECTIVES)
        for layers, recall, loss in rows:
            layout = tiny_layout(layers)
            t = s.ask()
            for k, v in (("layout", layout.to_dict()), ("layout_key", layout.key()), ("rung", rung),
                         ("parent", None if rung == 0 else [r[0] for r in NOISE_ROWS].index(layers))):
                t.set_user_attr(k, v)
            t.set_constraint("memory", -1.0)
            if isinstance(recall, float):  # the study format before seeds: one value, no spread recorded
                res = {**fake_result(layout, rung, random.Random(0)), "recall": recall, "lm_val_loss": loss}
            else:
                res = seeded_result(layout, recall, loss)
                t.set_user_attr("objective_sem", [res["sem"]["lm_val_loss"], res["sem"]["recall"], 0.0])
                t.set_user_attr("n_seeds", len(recall))
            t.set_user_attr("result", res)
            s.tell(t, [res["lm_val_loss"], res["recall"], res["state_bytes"]])
    return path
