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


# -- one resolver: every command that reads a study takes the same STUDY -------------------------------------------
@pytest.fixture(scope="module")
def toy_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One finished study (rungs 0 and 1, study_fixtures) named five ways: YAML, journal, run directory,
    ``journal:`` URL and an SQLite copy."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    from study_fixtures import build_study

    root = tmp_path_factory.mktemp("toy")
    journal = build_study(root)  # root/run/study.journal, study "toy"
    dump_yaml({"name": "toy", "run_dir": "run"}, root / "toy.yaml")
    url = f"sqlite:///{root / 'toy.db'}"
    source = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    for name in ("toy/rung0", "toy/rung1"):
        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=url)
    return {"yaml": str(root / "toy.yaml"), "journal": str(journal), "run_dir": str(journal.parent),
            "journal_url": f"journal:{journal}", "sqlite": url}


def test_search_status_takes_what_analysis_takes(toy_sources: dict[str, str], capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    outputs = {}
    for kind, source in toy_sources.items():
        assert main(["search", "status", source]) == 0, kind
        outputs[kind] = capsys.readouterr().out
        assert main(["analysis", "report", source, "--out", str(Path(toy_sources["journal"]).parent / "r.html")]) == 0
        capsys.readouterr()
    first = outputs["yaml"]
    assert "toy/rung0" in first and "toy/rung1" in first and "Pareto set of toy/rung1" in first
    assert all(out == first for out in outputs.values()), {k: v[:300] for k, v in outputs.items()}
    assert main(["search", "status", "toy", "--storage", toy_sources["journal"]]) == 0  # a name + --storage
    assert capsys.readouterr().out == first


def test_study_and_objective_names_get_a_did_you_mean(toy_sources: dict[str, str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    def error(argv: list[str]) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        return err

    assert "did you mean 'toy'?" in error(["search", "status", toy_sources["sqlite"], "--study", "tyo"])
    assert "did you mean 'toy'?" in error(["analysis", "report", toy_sources["journal"], "--study", "tyo"])
    assert "did you mean 'recall'?" in error(["analysis", "pareto", toy_sources["journal"], "--y", "recal"])
    path = tmp_path / "typo.yaml"
    dump_yaml({**study_dict(tmp_path, "typo"), "objectives": ["lm_loss", "recal"]}, path)
    err = error(["search", "run", str(path)])
    assert "objectives: unknown objective 'recal' (did you mean 'recall'?)" in err
    assert not (tmp_path / "typo").exists()
