"""benchmarks/retrofit_gpu.sh runs end to end on the CPU at tiny with a tiny budget (the GPU run's one command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ("--set retrofit.teacher.recall_steps=3 --set retrofit.teacher.mix_steps=2 --set retrofit.teacher.batch_size=4 "
        "--set retrofit.teacher.eval_examples=8 --set retrofit.transfer.steps=2 --set retrofit.transfer.batch_size=2 "
        "--set retrofit.distill.steps=2 --set retrofit.distill.batch_size=2 --set retrofit.pool_rows=16 "
        "--set retrofit.eval_examples=8 --set retrofit.eval_text_rows=2 --set retrofit.text.max_docs=20")


def test_retrofit_gpu_script_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "DEVICE": "cpu", "SCALE": "tiny", "LAYOUTS": "transformer gla-3:1", "SEEDS": "0",
           "SOLVED_AT": "0", "SETS": TINY, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"),
           "STATE": str(tmp_path / "state"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks/retrofit_gpu.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "fidelity_v2_cpu_tiny_retrofit.jsonl").read_text().splitlines()]
    assert sorted(r["layout_name"] for r in records) == ["gla-3:1", "transformer"]
    for r in records:
        assert r["proxy"] == "retrofit" and r["status"] == "ok" and r["machine"]
        assert set(r["levels"]) >= {"mqar@128x4", "hop1@64x4"} and 0.0 <= r["recall"] <= 1.0
        assert {"lm_loss", "kl", "before", "teacher"} <= set(r["extra"])
    assert list((out / "cache" / "teacher").glob("*.json")) and list((out / "cache" / "transfer").glob("*.json"))
    # the same command again runs nothing (records are kept in $STATE)
    again = subprocess.run(["bash", str(REPO / "benchmarks/retrofit_gpu.sh")], env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0 and "retrofit: 0 of 2 records to run" in again.stdout
