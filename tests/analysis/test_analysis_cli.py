"""`hyla analysis pareto|report|export` through hyla.cli.main: default outputs, what a pick means."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from hyla.analysis.study_data import load_study
from hyla.cli import main
from hyla.config import dump_yaml
from study_fixtures import build_study


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_study(tmp_path_factory.mktemp("study"))  # STUDY/run/study.journal


def test_outputs_default_to_the_run_directory(journal: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = journal.parent
    monkeypatch.chdir(tmp_path)
    assert main(["analysis", "report", str(journal)]) == 0
    assert main(["analysis", "pareto", str(run), "--rung", "0"]) == 0
    assert (run / "report.html").is_file() and (run / "pareto.html").is_file()
    assert capsys.readouterr().out.splitlines() == [f"wrote {run / 'report.html'}", f"wrote {run / 'pareto.html'}"]
    assert not list(tmp_path.iterdir())  # nothing in the current directory
    assert main(["analysis", "pareto", str(run), "--rung", "0", "--out", "mine.html"]) == 0  # --out still wins
    assert (tmp_path / "mine.html").is_file()


def test_study_yaml_run_dir_is_relative_to_the_yaml(journal: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    study_yaml = journal.parent.parent / "toy.yaml"  # next to run/: run_dir "run" means STUDY/run
    dump_yaml({"name": "toy", "run_dir": "run"}, study_yaml)
    monkeypatch.chdir(tmp_path)
    data = load_study(study_yaml)
    assert data.run_dir == journal.parent and data.output_path("report.html") == journal.parent / "report.html"


def test_database_study_uses_its_recorded_run_dir_when_present(journal: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from optuna.storages.journal import JournalFileBackend

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    source = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    for name in ("toy/rung0", "toy/rung1"):
        optuna.copy_study(from_study_name=name, from_storage=source, to_storage=url)
    monkeypatch.chdir(tmp_path)
    assert load_study(url).run_dir is None  # its config names no run_dir and hyla_runs/toy is not here
    assert load_study(url).output_path("report.html") == Path("report.html")
    optuna.load_study(study_name="toy/rung0", storage=url).set_user_attr(
        "config", {"name": "toy", "run_dir": str(journal.parent)})
    assert load_study(url).run_dir == journal.parent


def test_export_pick_says_which_front_the_knee_is_from(journal: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    desc = "knee of the 3-objective front (lm_loss, recall, memory_bytes)"
    assert main(["analysis", "export", str(journal), "--pick", "knee", "--out", str(tmp_path / "ex")]) == 0
    assert f"(knee: {desc}) -> " in capsys.readouterr().out.splitlines()[0]
    info = json.loads((tmp_path / "ex" / "trial.json").read_text())
    assert info["pick"] == {"name": "knee", "meaning": desc}


def test_search_run_gets_its_pareto_html_from_the_top_level(journal: Path, tmp_path: Path) -> None:
    """`hyla search run` writes pareto.html with analysis code that hyla.cli hands it (search never imports it)."""
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from hyla import cli

    args = cli.build_parser().parse_args(["search", "run", "study.yaml"])
    assert args.pareto_html is cli._pareto_html
    run = tmp_path / "run"
    cfg = SimpleNamespace(objectives=["lm_loss", "recall", "memory_bytes"], name="toy", run_path=run,
                          storage_url=lambda: str(journal))
    console = Console(file=io.StringIO(), width=200)
    args.pareto_html(cfg, console)
    assert (run / "pareto.html").is_file()
    assert console.file.getvalue().strip() == f"Pareto plot: {run / 'pareto.html'}"
