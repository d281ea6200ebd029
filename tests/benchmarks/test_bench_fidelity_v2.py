"""bench_fidelity_v2.py end to end on CPU at a tiny budget: the probe and capacity families over three mini
layouts x 2 seeds append one record each, a rerun skips them all, the report follows, and an unknown family fails at once with a
one-line error naming the families."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BENCH = REPO / "benchmarks" / "bench_fidelity_v2.py"
TINY = ["--set", "probe.steps=2", "--set", "probe.eval_every=1", "--set", "probe.eval_examples=4",
        "--set", "probe.pool_rows=8", "--set", "probe.batch_size=2", "--set", "probe.seq_len=32",
        "--set", "probe.pairs=[2, 4]",
        "--set", "capacity.steps=2", "--set", "capacity.batch_size=2", "--set", "capacity.lrs=[0.001]",
        "--set", "capacity.eval_every=1", "--set", "capacity.eval_examples=4", "--set", "capacity.pool_rows=8"]


def _run(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--scale", "mini", "--layouts", "transformer", "gla-pure",
           "gla-3:1", "--seeds", "0", "1", "--budgets", "1", "--jsonl", str(tmp / "fidelity_v2_t.jsonl"),
           "--cache-dir", str(tmp / "cache"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_driver_runs_probe_and_capacity_and_resumes(tmp_path: Path) -> None:
    first = _run(tmp_path, "--families", "capacity", "probe", *TINY)
    assert first.returncode == 0, first.stderr[-2000:]
    recs = [json.loads(line) for line in (tmp_path / "fidelity_v2_t.jsonl").read_text().splitlines()]
    assert len(recs) == 12 and {r["proxy"] for r in recs} == {"capacity", "probe"}
    for r in recs:
        assert r["status"] == "ok" and 0.0 <= r["recall"] <= 1.0 and r["levels"] and r["floor"] > 0
        assert r["layout_name"] in ("transformer", "gla-pure", "gla-3:1") and r["machine"]["device"] == "cpu"
        assert r["n_attn"] == {"transformer": 4, "gla-pure": 0, "gla-3:1": 1}[r["layout_name"]]
    cap = [r for r in recs if r["proxy"] == "capacity"]
    assert all(r["level_set"] == "retrofit-mini" and r["budget_steps"] == 2 for r in cap)
    assert "count-attn" in first.stdout and "== capacity" in first.stdout
    again = _run(tmp_path, "--families", "capacity", "probe", *TINY)
    assert again.returncode == 0 and "capacity: 0 of 6 records to run" in again.stdout
    assert len((tmp_path / "fidelity_v2_t.jsonl").read_text().splitlines()) == 12
    # another recipe is another record set
    other = _run(tmp_path, "--families", "capacity", *TINY[:-2], "--set", "capacity.pool_rows=16", "--max-seconds", "1")
    assert other.returncode == 0 and "capacity: 6 of 6 records to run" in other.stdout


def test_driver_refuses_an_unknown_family_at_once(tmp_path: Path) -> None:
    proc = _run(tmp_path, "--families", "retrofitt")
    assert proc.returncode == 2
    assert "proxy family: 'retrofitt' is not allowed; expected one of probe, capacity, retrofit" in proc.stderr
    proc = _run(tmp_path, "--families", "capacity", "--set", "steps=3")
    assert proc.returncode == 2 and "FAMILY.FIELD" in proc.stderr
