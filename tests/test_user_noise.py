"""What a user sees on a CPU machine: no fla "Triton is not supported" line from hyla's own fla imports, no
transformers deprecation line from ``generate``, and test-skip reasons that say what is missing and how to install
it. Each check runs in a fresh interpreter (warnings of this kind are printed once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
TRITON_LINE = "Triton is not supported on current platform"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # Python's default filters: what users get
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA fla's Triton line means something: it stays")
def test_hyla_imports_fla_on_cpu_without_the_triton_line(tmp_path: Path) -> None:
    code = """
import warnings, torch
from hyla.proxy_train.model.lm import HylaLM
from hyla.space.presets import resolve_preset
model = HylaLM(resolve_preset("gdn-3:1@mini"))              # fla's GatedDeltaNet layer: fla imported here
model(torch.zeros(1, 8, dtype=torch.long))
from hyla.proxy_train.model.mixers.registry import quiet_fla
with quiet_fla():
    warnings.warn("another warning stays visible")
"""
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert TRITON_LINE not in out.stderr and "another warning stays visible" in out.stderr, out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="on CUDA fla's Triton line means something: it stays")
def test_analysis_export_prints_no_triton_line(tmp_path: Path) -> None:
    from study_fixtures import build_study

    journal = build_study(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run([sys.executable, "-m", "hyla", "analysis", "export", str(journal), "--pick", "knee",
                          "--out", str(tmp_path / "ex")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert TRITON_LINE not in out.stderr + out.stdout, out.stderr


def test_generate_prints_no_deprecation(tmp_path: Path) -> None:
    code = """
import torch
import hyla
from transformers import AutoModelForCausalLM
from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM
from hyla.space.presets import resolve_preset
model = HylaForCausalLM(HylaConfig(layout=resolve_preset("gdn-3:1@mini").to_dict())).eval()
ids = torch.tensor([[1, 2, 3, 4]])
cached = model.generate(ids, max_new_tokens=6, do_sample=False)
plain = model.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False)
assert torch.equal(cached, plain), (cached, plain)
out = model(ids, use_cache=True)
assert out.cache is not None and out.cache.get_seq_length() == 4
"""
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "deprecated" not in out.stderr.lower(), out.stderr


def test_skip_reasons_say_what_is_missing_and_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    import postgres_server
    from browser import NO_CHROMIUM

    reasons = [NO_CHROMIUM]
    monkeypatch.setattr(postgres_server, "find_bin_dir", lambda: None)
    reasons.append(postgres_server.unavailable_reason())
    monkeypatch.setattr(postgres_server, "find_bin_dir", lambda: Path("/usr/lib/postgresql/16/bin"))
    monkeypatch.setattr(postgres_server.os, "geteuid", lambda: 1000)
    real_import = builtins.__import__

    def no_psycopg2(name, *args, **kwargs):
        if name == "psycopg2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psycopg2)
    reasons.append(postgres_server.unavailable_reason())
    monkeypatch.undo()
    for reason in reasons:
        assert reason and "install" in reason, reason
        assert not any(word in reason for word in ("lead", "helper", ".ci/")), reason
    texts = "".join(p.read_text() for p in TESTS.rglob("*.py") if p.name != Path(__file__).name)
    assert "the lead" not in texts and "(helper " not in texts
