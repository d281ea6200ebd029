"""The supernet benchmark's GPU command (``tools/supernet_gpu.sh``) run on the CPU: every part of
``bench_supernet.py`` end to end through the product's supernet, retrofit and probe code paths, with a short MQAR
level set, a handful of steps and a few layouts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SETS = ("--set retrofit.teacher.recall_steps=3 --set retrofit.teacher.mix_steps=1 "
        "--set retrofit.teacher.solved_at=0 --set retrofit.teacher.retries=0 --set retrofit.teacher.eval_examples=4 "
        "--set retrofit.transfer.steps=1 --set retrofit.distill.steps=1 --set retrofit.pool_rows=32 "
        "--set retrofit.eval_examples=4 --set retrofit.eval_text_rows=2 --set retrofit.text.max_docs=20 "
        "--set probe.steps=2 --set probe.eval_examples=4 --set probe.pool_rows=64 --set probe.eval_every=2 "
        "--supernet-steps 2 --eval-examples 4 --chunk 4")
VALIDITY = ("--set retrofit.seq_len=32 "  # the smoke level set's rows are 32 long
            "--calibration transformer gla-pure gla-6:1 gla-3:1 --seeds 2 --supernet-seeds 1 --budgets 1 --beam 1 "
            "--placement-mixer gla")


def test_the_gpu_command_runs_every_part_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "DEVICE": "cpu", "SCALE": "mini", "LAYOUTS": "6", "PYTHON": sys.executable,
           "OUT": str(tmp_path / "out"), "STATE": str(tmp_path / "state"), "LEVELS": "smoke:32:2,4:32", "SETS": SETS,
           "VALIDITY_ARGS": VALIDITY, "TRITON_CACHE_DIR": str(tmp_path / "tc"),
           "MAX_SECONDS": "1400"}  # a cap, not a target: the placement's stand-alone runs must start on a busy machine
    proc = subprocess.run(["bash", str(REPO / "tools" / "supernet_gpu.sh")], capture_output=True, text=True,
                          env=env, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "supernet_gpu.json").read_text())
    assert res["throughput"]["layouts"] == 6 and res["layouts_per_minute"] > 0
    assert res["throughput"]["scale"] == "mini" and res["supernet_train_s"] > 0
    assert set(res["runs"]) == {"throughput", "validity", "placement"}  # the second command added its parts
    assert "--scale mini" in res["runs"]["throughput"]["command"] and res["machine"]["device"] == "cpu"
    per_layout = res["validity"]["per_layout"]
    assert set(per_layout) == {f"{n}@tiny" for n in ("transformer", "gla-pure", "gla-6:1", "gla-3:1")}
    assert all(len(v["inherited"]) == 1 and len(v["standalone"]) == 2 and len(v["probe"]) == 2
               for v in per_layout.values())
    assert res["validity"]["vs_standalone"]["layouts"] == 4 and "inherited_vs_probe_spearman" in res
    k1 = res["placement"]["budgets"]["1"]
    assert len(k1["attention"]) == 1 and len(k1["importance"]) == 24
    assert len(k1["standalone"]["searched"]["recall"]) == 2 and k1["standalone"]["uniform"]["attention"] == [23]
    assert set(res["placement_beats_uniform"]) == {"1", "all"}
    records = [json.loads(line) for line in (tmp_path / "out" / "supernet_gpu.jsonl").read_text().splitlines()]
    assert sum(r["family"] == "retrofit" for r in records) == 8 + (2 if k1["same_placement"] else 4)
    assert sum(r["family"] == "probe" for r in records) == 4
