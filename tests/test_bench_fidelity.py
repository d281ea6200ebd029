"""bench_fidelity.py: its analysis on hand-made records, and one end-to-end CPU run through run_proxy."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
fidelity = importlib.import_module("bench_fidelity")


def _rec(name: str, mixer: str, n_attn: int, seed: int, budget: int, recall: float) -> dict:
    return {"layout_name": name, "mixer": mixer, "n_attn": n_attn, "seed": seed, "budget": budget,
            "variant": "v", "status": "ok", "recall": recall, "recall_levels": {"easy": recall}}


def test_analysis_on_hand_made_records() -> None:
    # two mixers, pure < 3:1 < 1:1 on every seed; the Transformer at 1.0; seed noise of +-0.01
    base = {("a-pure", "a", 0): 0.2, ("a-3:1", "a", 1): 0.6, ("a-1:1", "a", 2): 0.9,
            ("b-pure", "b", 0): 0.4, ("b-3:1", "b", 1): 0.7, ("t", "transformer", 4): 1.0}
    recs = [_rec(n, m, k, s, b, v + 0.01 * (s - 1) * (n != "t"))
            for (n, m, k), v in base.items() for s in (0, 1, 2) for b in (1, 4)]
    recs[0] = {**recs[0], "status": "failed"}  # ignored
    a = fidelity.analyze(recs, "v", [1, 4])
    b1 = a["budget1"]
    assert b1["reproducible"] == pytest.approx(1.0)  # every seed ranks the six layouts the same way
    assert b1["transformer_easiest"] == 1.0
    assert b1["trend_spearman"] > 0.6 and b1["every_pure_below_its_hybrids"] is True
    assert b1["pure_linear_all_tie"] is False  # 0.2 vs 0.4, noise ~0.01
    assert b1["layouts"]["a-pure"]["n"] == 2 and b1["layouts"]["a-3:1"]["n"] == 3
    assert a["consistent"]["spearman"] == pytest.approx(1.0) and a["consistent"]["n"] == 6
    flipped = [{**r, "recall": 1 - r["recall"]} if r["seed"] == 1 and r["budget"] == 1 else r for r in recs]
    assert fidelity.analyze(flipped, "v", [1, 4])["budget1"]["reproducible"] < 0.0  # seed 1 reverses the ranking


def test_variant_config_scales_the_probe_budget() -> None:
    from hyla.proxy_train.proxy_config import ProxyConfig

    base = ProxyConfig.load(str(ROOT / "benchmarks" / "fidelity_cpu.yaml"))
    name, over = fidelity.parse_variant("long:recall_probe.steps=50;recall_probe.lrs=[0.002]")
    cfg = fidelity.variant_config(base, over, seed=3, budget=4)
    assert name == "long" and cfg.recall_probe.steps == 200 and cfg.recall_probe.lrs == (0.002,)
    assert cfg.seed == 3 and cfg.seeds == 1 and not cfg.train_lm


@pytest.mark.slow
def test_cpu_run_end_to_end(tmp_path: Path) -> None:
    proxy = tmp_path / "p.yaml"
    proxy.write_text((ROOT / "benchmarks" / "fidelity_cpu.yaml").read_text().replace("steps: 300", "steps: 4"))
    jsonl, out = tmp_path / "f.jsonl", tmp_path / "f.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), "--device", "cpu", "--proxy", str(proxy),
           "--scale", "mini", "--layouts", "transformer", "gdn-pure", "--seeds", "0", "1", "--budgets", "1", "2",
           "--p", "1", "--jsonl", str(jsonl), "--out", str(out), "--max-seconds", "400"]
    subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600, capture_output=True)
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(recs) == 8 and all(r["status"] == "ok" for r in recs)
    assert {(r["seed"], r["budget"]) for r in recs} == {(0, 1), (1, 1), (0, 2), (1, 2)}
    assert {r["probe_steps"][0] for r in recs} == {4, 8}
    summary = json.loads(out.read_text())
    assert summary["analysis"]["default"]["consistent"]["n"] == 2
    again = subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600, capture_output=True, text=True)
    assert "0 to run" in again.stdout and len(jsonl.read_text().splitlines()) == 8  # finished jobs are skipped
