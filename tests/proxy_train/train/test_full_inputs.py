"""`hyla train` checks its inputs before Ray starts (layout, text source, tokenizer, recall tasks), dry run or not,
and bad input that only a worker can find ends the run at once instead of after max_failures restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hyla.cli import main
from test_full_run import tiny_spec


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hyla: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_missing_text_path_is_refused_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], dry_run: bool) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(Path("runs/full/tiny"),
                                             text={"source": "../shared/data/wikitext-2/valid.txt"})))
    assert main(["train", str(path), *(["--dry-run"] if dry_run else [])]) == 2
    err = _one_line_error(capsys)
    assert f"{path}: text.source: path '../shared/data/wikitext-2/valid.txt' does not exist" in err
    assert "'wikitext2-sample'" in err  # what is allowed instead
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]  # nothing written, no run directory


def test_a_dry_run_lists_what_only_the_hub_could_confirm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the laptop that writes a 340M spec for a GPU cluster
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"layout": "gdn-6:1@340m", "scale": "340m",
                                    "text": {"source": "hyla-test/not-cached", "max_docs": 10,
                                             "cache_dir": str(tmp_path / "cache")}}))
    assert main(["train", str(path), "--dry-run", "--json"]) == 0
    unchecked = json.loads(capsys.readouterr().out)["run"]["unchecked"]
    assert any(line.startswith("text.source: 'hyla-test/not-cached' is no local path") for line in unchecked)
    assert main(["train", str(path), "--dry-run"]) == 0
    assert "inputs   not checked here (the run checks them before it starts):" in capsys.readouterr().out
    assert main(["train", str(path)]) == 2  # the run itself refuses what it cannot read, before Ray
    assert "'hyla-test/not-cached' is no local path and the hub could not be reached" in _one_line_error(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_config_error_in_a_worker_is_not_retried(tmp_path: Path) -> None:
    """A text file of one paragraph passes the driver's check (it exists, it is .txt) but cannot be split into
    train and validation documents: each worker raises ConfigError while loading it. Ray Train would restart the
    worker group max_failures (3) times; the run must stop at the first, as one line and exit 2."""
    text = tmp_path / "one.txt"
    text.write_text("A single paragraph of text, so a single document.\n")
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(tmp_path / "run", text={"source": str(text)}, max_failures=3)))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-m", "hyla", "train", str(path)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hyla: error: text.source:") and "1 document" in last and "not retried" in last, last
    assert "[FailurePolicy] RETRY" not in out.stdout + out.stderr
