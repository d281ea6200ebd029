"""The GPU equivalence script run on CPU: its plumbing (cases, floors, tolerances, JSON), not fla's kernels.

On CPU the "fla path" of a linear mixer is its reference path, so fp32 errors must be exactly 0 and the bf16 error
must equal the bf16 floor; a bug in the comparison (wrong tensor, wrong floor, forward-only keys) shows here.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
eq = importlib.import_module("gpu_equivalence")


@pytest.mark.parametrize("forward_only", [True, False])
def test_cpu_run_records_errors_floors_and_tolerances(tmp_path: Path, forward_only: bool) -> None:
    out = tmp_path / "eq.json"
    argv = ["--device", "cpu", "--scale", "tiny", "--seq-len", "16", "--kinds", "gdn", "--skip-timing",
            "--no-conv-variants", "--out", str(out)] + (["--forward-only"] if forward_only else [])
    res = eq.main(argv)
    f32, bf16 = res["equivalence"]["gdn/float32"], res["equivalence"]["gdn/bfloat16"]
    assert ("grad_x" in f32) is (not forward_only) and ("worst_param" in bf16) is (not forward_only)
    assert f32["max_rel_err"] == 0.0 and f32["tf32_floor"] == 0.0 and f32["tolerance"] == 1e-3 and f32["pass"]
    assert 0 < bf16["max_rel_err"] == pytest.approx(bf16["bf16_floor"])
    assert bf16["tolerance"] == pytest.approx(max(1e-2, 2 * bf16["bf16_floor"])) and bf16["pass"]
    assert res["summary"] == {"equivalence_pass": 2, "equivalence_total": 2, "failed": []}
    assert res["triton_f32_default"].startswith("tf32") and out.exists()


def test_ieee_precision_sets_triton_default_and_drops_the_tf32_floor(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    res = eq.main(["--device", "cpu", "--scale", "tiny", "--seq-len", "16", "--kinds", "gla", "--skip-timing",
                   "--no-conv-variants", "--forward-only", "--dtypes", "float32", "--f32-precision", "ieee",
                   "--out", str(tmp_path / "eq.json")])
    assert os.environ.pop("TRITON_F32_DEFAULT") == "ieee" and res["triton_f32_default"] == "ieee"
    assert "tf32_floor" not in res["equivalence"]["gla/float32"]
