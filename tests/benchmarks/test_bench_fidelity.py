"""bench_fidelity.py: its variants, ``--analyze [JSONL]`` (a thin entry point to `hyla.analysis.fidelity`), and one
end-to-end CPU run of the probe-only path (the Ray-worker path runs end to end in test_benchmarks_cpu.py)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hyla.proxy_train.probe.stack import curve_auc
from conftest import REPO
from fidelity_records import paper_like

ROOT = REPO
sys.path.insert(0, str(ROOT / "benchmarks"))
fidelity = importlib.import_module("bench_fidelity")


def test_variant_config_scales_the_probe_budget() -> None:
    from hyla.proxy_train.proxy.config import ProxyConfig

    base = ProxyConfig.load(str(ROOT / "benchmarks" / "fidelity_cpu.yaml"))
    name, over = fidelity.parse_variant("long:recall.steps=50;recall.lrs=[0.002]")
    cfg = fidelity.variant_config(base, over, seed=3, budget=4)
    assert name == "long" and cfg.recall.steps == 200 and cfg.recall.lrs == (0.002,)
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
    assert all(0 <= r["recall_auc"] <= 1 and r["probe_budget"] == 4 * r["budget"] for r in recs)
    summary = json.loads(out.read_text())
    assert summary["analysis"]["default"]["consistent"]["n"] == 2
    again = subprocess.run(cmd, check=True, cwd=tmp_path, timeout=600, capture_output=True, text=True)
    assert "0 to run" in again.stdout and len(jsonl.read_text().splitlines()) == 8  # finished jobs are skipped


def test_analyze_cli_reports_the_findings(tmp_path: Path) -> None:
    jsonl, out = tmp_path / "grid.jsonl", tmp_path / "grid.json"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in paper_like()) + '{"torn": ')  # a killed writer's line
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), "--analyze", str(jsonl),
                           "--device", "cpu", "--budgets", "1", "--out", str(out)],
                          check=True, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    assert "1. recall rises with attention share: True" in proc.stdout
    assert "4. RetNet/HGRN hybrids recall worst: True" in proc.stdout
    f = json.loads(out.read_text())["analysis"]["v"]["budget1"]["paper_findings"]
    assert f["n_layouts"] == 31 and f["pure_recall_far_worse"]["holds"] is True


def test_analyze_backfills_the_curve_auc_from_the_variant(tmp_path: Path) -> None:
    """Records from before ``recall_auc`` get it from their best lr's curve and their variant's step budget."""
    jsonl, out = tmp_path / "old.jsonl", tmp_path / "old.json"
    proxy = tmp_path / "p.yaml"
    proxy.write_text((ROOT / "benchmarks" / "fidelity_cpu.yaml").read_text())
    early, late = [[[50, 1.0], [50, 1.0]]], [[[100, 0.2], [150, 0.2], [150, 1.0]], [[200, 0.1], [200, 0.1]]]
    recs = [{"layout_name": n, "mixer": "gla", "attn_share": 0.0, "n_attn": 0, "seed": s, "budget": 2,
             "variant": "v", "status": "ok", "recall": 1.0, "curve": c, "recall_levels": {"easy": 1.0}}
            for s in (0, 1) for n, c in (("fast", early), ("slow", late))]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_fidelity.py"), "--analyze", "--device", "cpu",
                    "--proxy", str(proxy), "--variant", "v:recall.steps=100", "--metric", "recall_auc",
                    "--budgets", "2", "--jsonl", str(jsonl), "--out", str(out)],
                   check=True, cwd=tmp_path, timeout=300, capture_output=True, text=True)
    table = json.loads(out.read_text())["analysis"]["v"]["budget2"]["layouts"]
    assert table["fast"]["mean"] == pytest.approx(curve_auc(early[0], 200))
    assert table["slow"]["mean"] == pytest.approx(curve_auc(late[0], 200))  # its best lr: final score 1.0
    assert table["slow"]["mean"] < table["fast"]["mean"]
