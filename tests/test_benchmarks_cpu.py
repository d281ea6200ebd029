"""CPU runs of the GPU throughput benchmarks (warm start, packing, paper grid) and the grid's analysis.

The scripts run end to end as subprocesses with ``--device cpu``, the tiny proxy, 4-layer d=32 layouts and 3-4
steps, their proxies on the product's Ray workers (``hyla.search.workers``) on a local Ray; the pure helpers
(overlap throughput, Spearman, findings) are checked on hand-made numbers.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
common = importlib.import_module("common")
grid = importlib.import_module("bench_grid")
packing = importlib.import_module("bench_packing")
warm = importlib.import_module("bench_warm_start")

FAST = ["--device", "cpu", "--proxy", "tiny", "--set", "recall_eval_examples=2", "--set", "eval_batches=1",
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

def test_grid_runs_resumes_and_analyzes(layouts: dict[str, str], tmp_path: Path) -> None:
    jsonl, out = tmp_path / "g.jsonl", tmp_path / "g.json"
    args = [*FAST, "--steps", "3", "--p", "2", "--layouts", *layouts.values(), "--jsonl", str(jsonl),
            "--out", str(out)]
    proc = _run("bench_grid.py", *args, triton=tmp_path / "tc")
    assert jsonl.exists(), proc.stdout[-3000:]  # no record: the cap came before any trial finished
    recs = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert sorted(r["layout_name"] for r in recs) == sorted(layouts)
    assert all(r["status"] == "ok" and r["recall"] is not None and r["lm_val_loss"] > 0 for r in recs)
    shares = {r["layout_name"]: r["attn_share"] for r in recs}
    assert shares == {"gla-3:1@t4": 0.25, "gla-pure@t4": 0.0, "gla-1:1@t4": 0.5}
    assert all(r["mixer"] == "gla" and r["first_step_s"] is not None for r in recs)
    summary = json.loads(out.read_text())
    assert summary["complete"] and summary["n_done"] == 3 and summary["trial_seconds"] > 0
    assert summary["machine"]["device"] == "cpu" and summary["machine"]["hostname"]
    assert summary["sessions"][0]["env"]["TRITON_CACHE_AUTOTUNING"] == "1"
    # second command: everything is done, nothing re-runs, the JSONL is untouched
    proc = _run("bench_grid.py", *args, triton=tmp_path / "tc")
    assert "3 done; 0 to run" in proc.stdout and len(jsonl.read_text().splitlines()) == 3
    assert len(json.loads(out.read_text())["sessions"]) == 2
    # a different budget is a different config: nothing is skipped
    changed = [a if a != "3" else "4" for a in args] + ["--limit", "2", "--plan"]
    proc = _run("bench_grid.py", *changed, triton=tmp_path / "tc")
    assert "0 done; 2 to run" in proc.stdout and proc.stdout.count("to run: ") == 2
    proc = _run("bench_grid.py", "--analyze", "--jsonl", str(jsonl), "--out", str(out), triton=tmp_path / "tc")
    findings = json.loads((tmp_path / "g_findings.json").read_text())["findings"]
    assert findings["n_ok"] == 3 and "recall rises with attention share" in proc.stdout


def test_grid_survives_a_worker_death(layouts: dict[str, str], tmp_path: Path) -> None:
    # the first trial's worker process dies (os._exit, as the OOM killer would); a fresh actor runs the next one
    jsonl, out = tmp_path / "g.jsonl", tmp_path / "g.json"
    args = [*FAST, "--steps", "3", "--p", "1", "--order", "given", "--layouts", layouts["gla-pure@t4"],
            layouts["gla-1:1@t4"], "--jsonl", str(jsonl), "--out", str(out)]
    _run("bench_grid.py", *args, triton=tmp_path / "tc", env={"HYLA_FAULT_EXIT_FILE": str(tmp_path / "fault")})
    recs = {r["layout_name"]: r for r in map(json.loads, jsonl.read_text().splitlines())}
    assert recs["gla-pure@t4"]["status"] == "failed" and "worker died" in recs["gla-pure@t4"]["fail_reason"]
    assert recs["gla-1:1@t4"]["status"] == "ok"
    proc = _run("bench_grid.py", *args, "--retry-failed", triton=tmp_path / "tc")  # the failed layout runs again
    assert "1 done; 1 to run" in proc.stdout and json.loads(out.read_text())["complete"]


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


def test_spearman() -> None:
    assert grid.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert grid.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert grid.spearman([1, 2, 3], [5, 5, 5]) is None
    # ties get average ranks: x ranks [1.5, 1.5, 3], y ranks [1, 2, 3] -> rho = sqrt(3)/2
    assert grid.spearman([0, 0, 1], [1, 2, 3]) == pytest.approx(3 ** 0.5 / 2)


SHARES = {"pure": 0.0, "24:1": 1 / 24, "12:1": 2 / 24, "6:1": 4 / 24, "3:1": 8 / 24}


def _synthetic(recall_of, lm_of) -> list[dict]:
    recs = []
    for m in ("hgrn", "retnet", "gla", "hgrn2", "deltanet", "gdn"):
        for label, share in SHARES.items():
            recs.append({"layout_name": f"{m}-{label}", "layout_key": f"{m}{label}", "config_key": "c",
                         "mixer": m, "attn_share": share, "status": "ok", "recall": recall_of(m, share),
                         "lm_val_loss": lm_of(m, share)})
    recs.append({"layout_name": "transformer", "layout_key": "t", "config_key": "c", "mixer": "transformer",
                 "attn_share": 1.0, "status": "ok", "recall": 0.9, "lm_val_loss": 3.0})
    recs.append({"layout_name": "broken", "layout_key": "b", "config_key": "c", "mixer": "gla", "attn_share": 0.5,
                 "status": "failed", "recall": None, "lm_val_loss": None})
    return recs


def test_analyze_paper_like_grid_finds_all_four(tmp_path: Path) -> None:
    weak = {"hgrn": 0.5, "retnet": 0.6}
    recs = _synthetic(lambda m, s: (0.05 if s == 0 else weak.get(m, 1.0) * (0.3 + s)),
                      lambda m, s: 3.0 + 0.01 * s + (0.02 if m == "hgrn" else 0.0))
    f = grid.analyze(recs)
    assert f["n_ok"] == 31 and f["transformer"]["recall"] == 0.9
    assert f["recall_rises_with_attention"]["holds"] and f["recall_rises_with_attention"]["pooled_spearman"] > 0.5
    assert f["lm_loss_flat_across_ratios"]["holds"]
    assert f["pure_recall_far_worse"]["holds"] and f["pure_recall_far_worse"]["factor"] > 5
    assert f["retnet_hgrn_hybrids_worst"]["holds"]
    assert [m for m, _ in f["retnet_hgrn_hybrids_worst"]["ranking_worst_first"][:2]] == ["hgrn", "retnet"]
    # the --analyze CLI reads the same records from a JSONL
    jsonl = tmp_path / "syn.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn": ')
    text = grid.format_findings(grid.analyze(list(grid.latest_by_layout(grid.read_jsonl(jsonl), None).values())))
    assert "1. recall rises with attention share: True" in text and "4. RetNet/HGRN hybrids recall worst: True" in text


def test_analyze_contrary_grid_rejects_all_four() -> None:
    recs = _synthetic(lambda m, s: (0.8 if s == 0 else (0.9 - s) * (0.5 if m == "gla" else 1.0)),
                      lambda m, s: 3.0 + 3.0 * s)
    f = grid.analyze(recs)
    assert f["recall_rises_with_attention"]["holds"] is False
    assert f["lm_loss_flat_across_ratios"]["holds"] is False
    assert f["pure_recall_far_worse"]["holds"] is False
    assert f["retnet_hgrn_hybrids_worst"]["holds"] is False
    assert grid.analyze([])["recall_rises_with_attention"]["holds"] is None


def test_grid_schedules_slowest_layouts_first() -> None:
    from hyla.space.presets import paper_grid

    order = [lay.name for lay in grid.slowest_first(paper_grid("small"))]
    assert sorted(order) == sorted(lay.name for lay in paper_grid("small"))
    assert order[0] == "deltanet-pure@small" and order[-1] == "transformer@small"
    # within a mixer, more linear layers (of a slower kind than attention) come first
    gla = [name for name in order if name.startswith("gla-")]
    assert gla == ["gla-pure@small", "gla-24:1@small", "gla-12:1@small", "gla-6:1@small", "gla-3:1@small"]
