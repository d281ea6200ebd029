"""Small real Optuna studies written the way the search package stores them (ARCHITECTURE.md storage contract).

Used by the other tests/test_analysis*.py files. Params and memory come from hyla.space.cost (exact), recall and
loss from a seeded formula that rewards softmax heads, so fronts have a meaningful shape.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

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
    cost = pytest.importorskip("hyla.space.cost", reason="hyla.space.cost (helper A) not available yet")
    pc = cost.param_count(layout)
    mem = cost.inference_memory(layout, CONTEXT)
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


def test_build_study_writes_both_rung_modes(tmp_path: Path) -> None:
    for mode in ("studies", "attr"):
        p = build_study(tmp_path / mode, rung_mode=mode)
        names = optuna.get_all_study_names(optuna.storages.JournalStorage(JournalFileBackend(str(p))))
        assert names == (["toy/rung0", "toy/rung1"] if mode == "studies" else ["toy"])
