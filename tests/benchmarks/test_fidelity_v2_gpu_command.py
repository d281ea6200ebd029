"""The GPU calibration's one command (``bash tools/gpu_session.sh fidelity-v2``) runs end to end on the CPU at tiny
with a tiny budget (staging off: this venv has hyla): it starts the driver in the background, waits for it, leaves
records, analysis, cache JSON and the log in $OUT, and the same command again resumes (nothing left to run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

TINY = ["--set", "retrofit.teacher.recall_steps=3", "--set", "retrofit.teacher.mix_steps=2",
        "--set", "retrofit.teacher.batch_size=4", "--set", "retrofit.teacher.eval_examples=8",
        "--set", "retrofit.teacher.solved_at=0", "--set", "retrofit.transfer.steps=2",
        "--set", "retrofit.transfer.batch_size=2", "--set", "retrofit.distill.steps=2",
        "--set", "retrofit.distill.batch_size=2", "--set", "retrofit.pool_rows=16", "--set", "retrofit.eval_examples=8",
        "--set", "retrofit.eval_text_rows=2", "--set", "retrofit.text.max_docs=20"]


def test_gpu_calibration_command_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "FV2_STAGE": "0", "FV2_WAIT": "800", "FV2_STATE": str(tmp_path / "state"), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(REPO / "tools/gpu_session.sh"), "fidelity-v2", "--device", "cpu", "--scale", "tiny",
           "--families", "retrofit", "--layouts", "transformer", "gla-3:1", "--seeds", "0", "--budgets", "1", *TINY]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fidelity-v2 started" in proc.stdout and "fidelity-v2 finished (exit 0)" in proc.stdout
    out = tmp_path / "out"
    records = [json.loads(line) for line in (out / "fidelity_v2_gpu_small.jsonl").read_text().splitlines()]
    assert sorted(r["layout_name"] for r in records) == ["gla-3:1", "transformer"]
    for r in records:  # the gpu-small recipe's options: unsolved levels dropped, not a stop
        assert r["proxy"] == "retrofit" and r["status"] == "ok" and r["machine"] and r["level_set"] == "retrofit-tiny"
        assert r["extra"]["config"]["teacher"]["unsolved"] == "drop" and 0.0 <= r["recall"] <= 1.0
        assert {"lm_loss", "kl", "before", "teacher", "dropped"} <= set(r["extra"])
    assert (out / "fidelity_v2_gpu_small.analysis.json").exists() and "count-attn" in (out / "fidelity_v2_gpu.log").read_text()
    assert list((out / "cache" / "teacher").glob("*.json")) and list((out / "cache" / "transfer").glob("*.json"))
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0 and "retrofit: 0 of 2 records to run" in again.stdout
