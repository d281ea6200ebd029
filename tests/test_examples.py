"""Every file in examples/ runs from a copy of the folder with nothing beside it (no ../shared, as in a user's
clone): a dry run or a few steps each, by what the file is. A new example of a new kind fails here until it gets a
check."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import REPO
from hyla.cli import main
from hyla.config import load_yaml

EXAMPLES = REPO / "examples"


def _kind(data: dict) -> str:
    if "rungs" in data or "objectives" in data:
        return "study"
    if "layout" in data:
        return "run spec"
    if "preset" in data:
        return "proxy config"
    if "scale" in data and ("mixers" in data or "placements" in data):
        return "space"
    return "unknown"


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path/clone/examples``: the examples alone; the current directory is the clone."""
    root = tmp_path / "clone"
    shutil.copytree(EXAMPLES, root / "examples")
    assert not (root.parent / "shared").exists()
    monkeypatch.chdir(root)
    return root


def test_no_example_reaches_outside_the_package() -> None:
    for path in EXAMPLES.iterdir():
        text = path.read_text()
        assert "../" not in text and "shared/" not in text, f"{path.name} names a path outside the clone"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.iterdir()))
def test_every_example_runs_from_a_clone(name: str, clone: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = clone / "examples" / name
    kind = _kind(load_yaml(path))
    if kind == "space":
        from hyla.search.fresh import enumerate_layouts
        from hyla.space.search_space import load_space

        space = load_space(path)
        assert enumerate_layouts(space, limit=64) != {}  # it builds layouts (None: more than 64 parameter sets)
    elif kind == "study":  # everything `hyla search run` checks before Ray: space, proxies, data, seeds, storage
        from hyla.search.config import load_study_config
        from hyla.search.prepare import prepare

        prep = prepare(load_study_config(path, run_dir=str(clone / "runs" / path.stem)))
        assert prep.proxies and (clone / "runs" / path.stem / "study.yaml").is_file()
    elif kind == "run spec":  # `hyla train --dry-run`: model, budget, text source, tokenizer, recall tasks
        assert main(["train", str(path), "--dry-run", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["run"]["unchecked"] == []  # nothing left to the hub: it runs offline
        assert not (clone / "runs").exists()
    elif kind == "proxy config":  # the recipe as written, for 3 steps (the file trains 40)
        from hyla.proxy_train.proxy.config import ProxyConfig
        from hyla.proxy_train.proxy.run import run_proxy
        from hyla.space.presets import resolve_preset

        cfg = replace(ProxyConfig.load(path), steps=3, device="cpu")
        result = run_proxy(resolve_preset("gla-6:1@tiny"), cfg, out_dir=clone / "runs" / "proxy", progress=False)
        assert result.status == "ok", result.fail_reason
    else:
        pytest.fail(f"examples/{name}: no check for this kind of file; add one to tests/test_examples.py")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_tiny_trains_a_few_steps_from_a_clone(clone: Path) -> None:
    """`hyla train examples/full_tiny.yaml` itself (Ray Train, 2 DDP workers), cut to 4 steps."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    out = subprocess.run([sys.executable, "-m", "hyla", "train", "examples/full_tiny.yaml", "--tokens", "4096",
                          "--out", "runs/tiny"], cwd=clone, env=env, capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads((clone / "runs" / "tiny" / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 4
