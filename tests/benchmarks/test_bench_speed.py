"""benchmarks/bench_speed.py (issue 33's GPU script) on the CPU: its phases end to end through `hyla train` and
bench_340m, its throughput arithmetic, and the kernel-cache archive that seeds a later device call."""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
speed = importlib.import_module("bench_speed")


def test_steady_throughput_leaves_out_start_up_and_weights_windows_by_time() -> None:
    rows = [{"step": 1, "tokens_per_s": 10.0, "mfu": 0.01, "peak_mem_gib": 5.0},  # first step: compilation
            {"step": 5, "tokens_per_s": 800.0, "mfu": 0.8, "peak_mem_gib": 6.0},  # still meeting kernels
            {"step": 10, "tokens_per_s": 1000.0, "mfu": 1.0, "peak_mem_gib": 6.0},
            {"step": 15, "tokens_per_s": 500.0, "mfu": 0.5, "peak_mem_gib": 6.5}]
    s = speed.steady(rows, tokens_per_step=100)
    # windows 5..10 and 10..15: 500 tokens in 0.5 s + 500 tokens in 1 s (not the mean of the two rates, 750)
    assert s["windows_used"] == 2 and s["steps"] == 10
    assert s["tokens_per_s"] == pytest.approx(1000 / 1.5, abs=0.1)
    assert s["mfu"] == pytest.approx(1000 / 1.5 / 1000, abs=1e-3)
    assert s["peak_mem_gib"] == 6.5
    assert speed.steady(rows[:1], 100)["tokens_per_s"] is None


def _bench(tmp_path: Path, cache: str, out: str) -> object:
    args = argparse.Namespace(out=str(tmp_path / out), work=str(tmp_path / "work"), cache=str(tmp_path / cache),
                              cpu_smoke=True, part="all")
    return speed.Bench(args)


def test_kernel_cache_archive_seeds_a_fresh_cache(tmp_path: Path) -> None:
    """archive_cache -> parts in --out; seed_cache on a fresh machine (same --cache path) restores every file."""
    b = _bench(tmp_path, "cache", "out1")
    files = {"kernels/triton/ab12/chunk_gla_fwd.autotune.json": b'{"key": [1], "configs_timings": []}',
             "kernels/triton/ab12/chunk_gla_fwd.cubin": bytes(range(256)) * 64,
             "kernels/inductor/fxgraph/x/entry": b"graph"}
    for rel, data in files.items():
        (b.cache / rel).parent.mkdir(parents=True, exist_ok=True)
        (b.cache / rel).write_bytes(data)
    res = speed.archive_cache(b)
    assert res["status"] == "ok: 1 part(s)" and res["files"] == 3
    assert (b.out / "kernel_cache.tar.gz.00").is_file() and (b.out / "kernel_autotune.tar.gz").is_file()
    seeded = tmp_path / "seeded"
    b.cache.rename(seeded)  # the machine is gone; a fresh one has no cache
    res = speed.seed_cache(b, b.out)
    assert res["seeded_from"] == ["kernel_cache.tar.gz.00"] and res["kernel_files"] == 3
    for rel, data in files.items():
        assert (b.cache / rel).read_bytes() == data
    (b.out / "kernel_cache.tar.gz.00").unlink()  # only the autotuning results carried: those alone come back
    b.cache.rename(tmp_path / "again")
    assert speed.seed_cache(b, b.out)["kernel_files"] == 1
    assert (b.cache / "kernels/triton/ab12/chunk_gla_fwd.autotune.json").is_file()


def test_cpu_smoke_phases_end_to_end(tmp_path: Path) -> None:
    """hyla train (a real run, stopped once its log has the steps); the side-by-side through bench_340m: hyla and
    transformers' Llama of the same shape (same parameter count), fla's model skipped off CUDA; a compiled
    configuration, whose Inductor kernels land in the run's kernel cache and in the archive."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_speed.py"), "--cpu-smoke", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--cache", str(tmp_path / "cache"),
                           "--phases", "train_cold:gla,side_by_side,levers:compile,archive", "--max-seconds", "900"],
                          capture_output=True, text=True, timeout=960, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "bench_speed.json").read_text())
    assert report["cache"]["env"]["TRITON_CACHE_DIR"] == str(tmp_path / "cache" / "kernels" / "triton")
    train = report["phases"]["train_cold:gla"]
    assert train["status"] == "ok" and train["ended"] == "stopped: measured enough", train
    assert train["first_step"] == 1 and set(train["startup"]) == {"model_ready", "data_ready", "first_step_done"}
    assert train["launch_to_first_step_s"] > train["startup"]["first_step_done"]
    assert train["steady"]["tokens_per_s"] > 0 and train["rows"][-1]["step"] >= 2
    side = {(r["target"].split(":")[0], Path(r["target"].split(":", 1)[1]).stem, r["config"]): r
            for r in report["phases"]["side_by_side"]["rows"]}
    assert side[("fla", "gla-pure", "as shipped")]["status"].startswith("skipped: fla's models run Triton kernels")
    llama, hyla = side[("llama", "transformer", "as shipped")], side[("hyla", "transformer", "eager")]
    assert llama["status"] == "ok" and hyla["status"] == "ok" and llama["params"] == hyla["params"]
    assert side[("hyla", "gla-6_1", "fused+tf32")]["settings"] == speed.FAST
    compiled = report["phases"]["levers:compile"]["rows"]
    assert compiled and all(r["status"] == "ok" and r["settings"]["compile"] for r in compiled)
    inductor = tmp_path / "cache" / "kernels" / "inductor"
    assert any(p.is_file() for p in inductor.rglob("*"))  # bench_340m compiled into hyla's kernel cache
    archive = report["phases"]["archive"]
    assert archive["files"] > 0 and archive["status"] == "ok: 1 part(s)" and (out / "kernel_cache.tar.gz.00").is_file()
