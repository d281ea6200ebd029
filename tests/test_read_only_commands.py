"""Commands that only read a study (`hyla search status`, `hyla analysis pareto|report|export|calibrate`) never
create storage: a study that was never run is a one-line error (exit 2), and the disk is as it was before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hyla.cli import main
from hyla.config import dump_yaml
from test_search_helpers import study_dict


def _tree(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its size (0 for directories): what a command may not change."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else 0) for p in sorted(root.rglob("*"))}


READ_ONLY = [["search", "status"], ["analysis", "pareto"], ["analysis", "report"],
             ["analysis", "export", "--pick", "knee", "--out", "ex"], ["analysis", "calibrate", "--reference-rung", "1"]]


@pytest.mark.parametrize("command", READ_ONLY, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("source", ["yaml", "journal", "run_dir", "sqlite", "empty_sqlite"])
def test_a_study_that_never_ran_is_an_error_and_nothing_is_written(
        command: list[str], source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    study = {"name": "never", **{k: v for k, v in study_dict(tmp_path, "never").items() if k != "run_dir"}}
    dump_yaml(study, tmp_path / "study.yaml")
    (tmp_path / "empty.db").write_bytes(b"")  # a database file that holds no Optuna tables
    arg = {"yaml": "study.yaml", "journal": "hyla_runs/never/study.journal", "run_dir": "hyla_runs/never",
           "sqlite": f"sqlite:///{tmp_path / 'never.db'}", "empty_sqlite": f"sqlite:///{tmp_path / 'empty.db'}"}[source]
    before = _tree(tmp_path)
    assert main([*command[:2], arg, *command[2:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hyla: error: ") and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before, f"{' '.join(command)} {arg} wrote to disk"
    assert not os.path.exists(tmp_path / "hyla_runs")
