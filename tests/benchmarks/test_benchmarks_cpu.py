"""CPU runs of the GPU benchmarks on the product's Ray workers (warm start, packing, bench_fidelity's LM path).

The scripts run end to end as subprocesses with ``--device cpu``, the tiny proxy, 4-layer d=32 layouts and 3-8
steps, their proxies on the product's Ray workers (``hyla.search.workers``) on a local Ray; the pure helpers
(overlap throughput, warm-start target, slowest-first order) are checked on hand-made numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

ROOT = REPO
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
common = importlib.import_module("common")
packing = importlib.import_module("bench_packing")
warm = importlib.import_module("bench_warm_start")

FAST = ["--device", "cpu", "--proxy", "tiny", "--set", "recall.eval_examples=2", "--set", "eval_batches=1",
        "--set", "text={source: stdlib, max_docs: 40}", "--max-seconds", "540"]  # a cap, not a target: Ray workers start slowly on a loaded 2-core machine


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from hyla.space.layout import Layout

    d = tmp_path_factory.mktemp("layouts")
    specs = {"gla-3:1@t4": ("gla", "gla", "gla", "attn"), "gla-pure@t4": ("gla",) * 4,
             "gla-1:1@t4": ("gla", "attn", "gla", "attn")}
    out = {}
    for name, layers in specs.items():
        path = d / f"{name.replace(':', '_').replace('@', '_')}.yaml"
        Layout(layers=layers, d_model=32, vocab_size=512, mlp_hidden=64, num_heads=2, name=name).dump(path)
        out[name] = str(path)
    return out


def _run(script: str, *args: str, triton: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRITON_CACHE_DIR": str(triton), **(env or {})}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          env=env, timeout=660, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ------------------------------------------------------------------------------------------------ end to end

def test_fidelity_lm_run_survives_a_worker_death_and_resumes(layouts: dict[str, str], tmp_path: Path) -> None:
    # bench_fidelity with an LM proxy (the paper grid's path): run_proxy on the product's Ray workers
    jsonl, out = tmp_path / "g.jsonl", tmp_path / "g.json"
    base = [*FAST, "--set", "steps=3", "--seeds", "0", "--budgets", "1", "--order", "given", "--jsonl", str(jsonl),
            "--out", str(out), "--layouts", layouts["gla-pure@t4"], layouts["gla-1:1@t4"]]
    # the first trial's worker process dies (os._exit, as the OOM killer would); a fresh actor runs the next one
    _run("bench_fidelity.py", *base, "--p", "1", triton=tmp_path / "tc",
         env={"HYLA_FAULT_EXIT_FILE": str(tmp_path / "fault")})
    recs = {r["layout_name"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert recs["gla-pure@t4"]["status"] == "failed" and "worker died" in recs["gla-pure@t4"]["fail_reason"]
    assert recs["gla-1:1@t4"]["status"] == "ok"
    # second command, one more layout: the failed job and the new one run, the finished one is skipped
    proc = _run("bench_fidelity.py", *base, layouts["gla-3:1@t4"], "--p", "2", triton=tmp_path / "tc")
    assert "3 jobs (3 layouts x 1 seeds x 1 budgets x 1 variants), 2 to run" in proc.stdout
    ok = [r for r in map(json.loads, jsonl.read_text().splitlines()) if r["status"] == "ok"]
    assert sorted(r["layout_name"] for r in ok) == sorted(layouts)
    assert all(r["recall"] is not None and r["lm_val_loss"] > 0 for r in ok)
    assert {r["layout_name"]: r["attn_share"] for r in ok} == {"gla-3:1@t4": 0.25, "gla-pure@t4": 0.0,
                                                                 "gla-1:1@t4": 0.5}
    summary = json.loads(out.read_text())
    assert summary["machine"]["device"] == "cpu" and summary["sessions"][1]["env"]["TRITON_CACHE_AUTOTUNING"] == "1"
    findings = summary["analysis"]["default"]["budget1"]["paper_findings"]
    assert findings["n_layouts"] == 3 and findings["mixers"] == ["gla"]
    assert findings["lm_loss_flat_across_ratios"]["per_mixer_rel_spread"]["gla"] > 0  # 3:1 vs 1:1, seed means
    assert "2. LM loss nearly flat across ratios:" in proc.stdout  # decidable, so logged
    # third command: everything is done, nothing runs, the JSONL is untouched
    lines = jsonl.read_text()
    proc = _run("bench_fidelity.py", *base, layouts["gla-3:1@t4"], "--p", "2", triton=tmp_path / "tc")
    assert ", 0 to run" in proc.stdout and jsonl.read_text() == lines


def test_packing_and_warm_start(layouts: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "pack.json"
    # the start barrier makes the P = 2 runs train together, so their overlap window is never empty
    _run("bench_packing.py", *FAST, "--ps", "1,2", "--steps", "8", "--warm-steps", "1",
         "--layout", layouts["gla-3:1@t4"], "--out", str(out), triton=tmp_path / "tc")
    rep = json.loads(out.read_text())
    assert rep["complete"] and set(rep["rounds"]) == {"1", "2"}
    for p, rec in rep["rounds"].items():
        assert rec["statuses"] == ["ok"] * int(p) and rec["overlap_tokens_per_s"] > 0
        assert len(rec["per_run_tokens_per_s"]) == int(p)
    assert rep["summary"]["single_tokens_per_s"] == rep["rounds"]["1"]["overlap_tokens_per_s"]
    assert rep["rounds"]["1"]["speedup_vs_1"] == pytest.approx(1.0)
    proc = _run("bench_packing.py", *FAST, "--ps", "1,2", "--steps", "8", "--warm-steps", "1",
                "--layout", layouts["gla-3:1@t4"], "--out", str(out), triton=tmp_path / "tc")
    assert "nothing to do" in proc.stdout  # resumed: both P already measured

    out = tmp_path / "warm.json"
    _run("bench_warm_start.py", *FAST, "--steps", "3", "--layouts", layouts["gla-3:1@t4"], layouts["gla-1:1@t4"],
         "--out", str(out), triton=tmp_path / "tc")
    rep = json.loads(out.read_text())
    assert rep["complete"] and [t["layout"] for t in rep["trials"]] == ["gla-3:1@t4", "gla-1:1@t4"]
    assert all(t["status"] == "ok" and t["probe"] and 0 < t["first_step_s"] < t["trial_wall_s"]
               for t in rep["trials"])
    assert rep["summary"]["trials"] == 2 and rep["summary"]["later_max_start_s"] == rep["trials"][1]["first_step_s"]
    assert rep["machine"]["torch"] and rep["env"]["TRITON_CACHE_DIR"] == str(tmp_path / "tc")


def test_bad_input_is_one_line_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / "bench_packing.py"), "--device", "cpu", "--ps", "1,x",
                           "--out", str(tmp_path / "p.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--ps" in proc.stderr and "1,x" in proc.stderr


# ------------------------------------------------------------------------------------------------ pure helpers

def test_overlap_throughput_counts_only_common_window() -> None:
    # run a: steps start every 1 s from t=0; run b starts 2 s later
    a, b = [float(t) for t in range(8)], [2.0 + t for t in range(8)]
    r = packing.overlap_throughput([a, b], tokens_per_step=100)
    assert r["window_s"] == pytest.approx(4.0)  # [max(1, 3), min(7, 9)] = [3, 7]
    assert r["tokens"] == 8 * 100 and r["tokens_per_s"] == pytest.approx(200.0)
    # staggered by half a step: each run has 1.5 steps in the window [2.5, 4] -> 3 steps / 1.5 s
    r = packing.overlap_throughput([[0.0, 1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 4.5]], tokens_per_step=10)
    assert r["window_s"] == pytest.approx(1.5) and r["tokens_per_s"] == pytest.approx(20.0)
    assert packing.overlap_throughput([[0.0, 1.0, 2.0], [5.0, 6.0, 7.0]], 10)["tokens_per_s"] is None
    assert packing.overlap_throughput([[0.0, 1.0]], 10)["tokens_per_s"] is None


def test_warm_summary_target() -> None:
    s = warm.summarize([{"first_step_s": 90.0}, {"first_step_s": 2.0}, {"first_step_s": 4.5}])
    assert s["first_trial_start_s"] == 90.0 and s["later_max_start_s"] == 4.5 and s["meets_target"]
    assert not warm.summarize([{"first_step_s": 90.0}, {"first_step_s": 6.0}])["meets_target"]
    assert not warm.summarize([{"first_step_s": 90.0}, {"first_step_s": None}])["meets_target"]


def test_slowest_layouts_first() -> None:
    from hyla.space.presets import paper_grid

    order = [lay.name for lay in common.slowest_first(paper_grid("small"))]
    assert sorted(order) == sorted(lay.name for lay in paper_grid("small"))
    assert order[0] == "deltanet-pure@small" and order[-1] == "transformer@small"
    # within a mixer, more linear layers (of a slower kind than attention) come first
    gla = [name for name in order if name.startswith("gla-")]
    assert gla == ["gla-pure@small", "gla-24:1@small", "gla-12:1@small", "gla-6:1@small", "gla-3:1@small"]
