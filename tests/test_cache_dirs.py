"""hyla.cache_dirs: one cache root, and the kernel caches that `hyla train` and every search worker share."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hyla.cache_dirs import ENV_VAR, KERNEL_ENV_KEYS, cache_root, kernel_cache_env, use_kernel_caches


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No hyla or kernel-cache variable set (restored after the test)."""
    for key in (ENV_VAR, *KERNEL_ENV_KEYS):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_root_precedence(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_root() == (Path.home() / ".cache" / "hyla").resolve()
    clean_env.setenv(ENV_VAR, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"  # an explicit root beats the variable


def test_kernel_caches_under_the_root_and_user_settings_win(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv(ENV_VAR, str(tmp_path))
    clean_env.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    got = use_kernel_caches()
    assert got == {"TRITON_CACHE_DIR": str(tmp_path / "mine"),  # the user's own Triton cache is kept
                   "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "kernels" / "inductor"),
                   "TRITON_CACHE_AUTOTUNING": "1", "FLA_CACHE_RESULTS": "1"}
    assert {k: os.environ[k] for k in KERNEL_ENV_KEYS} == got
    assert kernel_cache_env()["TRITON_CACHE_DIR"] == str(tmp_path / "kernels" / "triton")


def test_text_hub_cache_follows_the_root(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hyla.proxy_train.train.text import TextConfig, hub_cache_path

    clean_env.setenv(ENV_VAR, str(tmp_path))
    assert hub_cache_path(TextConfig(source="org/corpus")).parent == tmp_path / "text"
    assert hub_cache_path(TextConfig(source="org/corpus", cache_dir=str(tmp_path / "x"))).parent == tmp_path / "x"


def test_search_workers_and_hyla_train_share_the_kernel_caches(clean_env: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """A driver with ``HYLA_CACHE_DIR`` set: the search's Ray proxy workers and `hyla train`'s Ray Train worker
    (its run's ``final.json``) all point Triton and Inductor at ``$HYLA_CACHE_DIR/kernels``, set before fla loads."""
    import ray

    from hyla.search.workers import WorkerPool, ensure_ray

    root = tmp_path / "cache"
    clean_env.setenv(ENV_VAR, str(root))
    want = kernel_cache_env(root)
    if ray.is_initialized():
        ray.shutdown()  # a Ray started by an earlier test has that test's environment
    ensure_ray(None, num_cpus=2)
    try:
        pool = WorkerPool(2, 1, 0)
        ray.get([pool.actors[s].ready.remote() for s in range(2)])
        seen = ray.get([pool.actors[s].kernel_caches.remote() for s in range(2)])
        pids = ray.get([pool.actors[s].pid.remote() for s in range(2)])
        pool.shutdown()
    finally:
        ray.shutdown()
    assert len(set(pids)) == 2 and seen == [want, want]

    spec = {"layout": {"layers": ["gla", "attn"], "d_model": 32, "vocab_size": 260, "mlp_hidden": 64,
                       "num_heads": 2, "name": "cache-test"},
            "scale": "custom", "tokens": 2 * 256, "seq_len": 64, "global_batch_tokens": 256, "micro_batch": 4,
            "warmup_steps": 1, "text": {"source": "stdlib", "max_docs": 40}, "tokenizer": "byte",
            "out_dir": str(tmp_path / "run"), "use_gpu": False, "bf16": False,
            "eval": {"val_tokens": 128, "batch_size": 2, "recall_tasks": ["mqar"], "recall_examples": 0}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "hyla", "train", str(tmp_path / "spec.yaml")], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["kernel_caches"] == want
    rows = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    # the process's first step is logged at once, with where its start-up time went
    assert rows[0]["step"] == 1 and set(rows[0]["startup"]) == {"model_ready", "data_ready", "first_step_done"}
    assert rows[0]["startup"]["model_ready"] <= rows[0]["startup"]["data_ready"] <= rows[0]["startup"]["first_step_done"]
    assert "startup" not in rows[-1] and rows[-1]["step"] == 2 and rows[-1]["peak_mem_gib"] is None
