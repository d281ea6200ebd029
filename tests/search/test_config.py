"""A study's proxy configs are parsed once, when the study loads, and travel typed from there to the workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO, tiny_layout
from hyla.config import dump_yaml
from hyla.proxy_train.proxy.config import ProxyConfig
from hyla.search.config import load_study_config
from hyla.search.prepare import prepare
from test_search_helpers import PROXY


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every `ProxyConfig.from_dict` call from now on, by its ``where``."""
    seen: list[str] = []
    real = ProxyConfig.from_dict.__func__

    def counted(cls: type, data: dict | None, where: str = "proxy config") -> ProxyConfig:
        seen.append(where)
        return real(cls, data, where)

    monkeypatch.setattr(ProxyConfig, "from_dict", classmethod(counted))
    return seen


def test_rung_proxies_are_parsed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parses: list[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the quickstart's run directory is relative to the current directory
    proxy_file = tmp_path / "proxy.yaml"
    dump_yaml(PROXY, proxy_file)
    study = tmp_path / "study.yaml"
    quickstart = load_study_config(REPO / "examples" / "quickstart.yaml")
    assert len(parses) == 2  # one per rung (an inline mapping each)
    data = {**quickstart.to_dict(), "name": "typed", "rungs": [{"proxy": "tiny"}, {"proxy": str(proxy_file)}]}
    dump_yaml(data, study)
    parses.clear()
    cfg = load_study_config(study)
    assert len(parses) == 2 and parses[1] == str(proxy_file)  # a preset name and a file: once each
    assert all(isinstance(rung.proxy, ProxyConfig) for rung in cfg.rungs)
    assert cfg.rungs[1].proxy == ProxyConfig.from_dict(PROXY)
    parses.clear()
    prep = prepare(cfg)  # checks the corpora and the objectives on the parsed configs
    assert parses == [] and [p is r.proxy for p, r in zip(prep.proxies, cfg.rungs)] == [True, True]
    assert ProxyConfig.load(prep.proxy_paths[1]) == cfg.rungs[1].proxy  # proxy_rung1.yaml says what runs


def test_a_worker_runs_the_parsed_config_as_it_is(parses: list[str]) -> None:
    """What the driver submits is the ProxyConfig itself (Ray pickles it); a worker never parses, and refuses a
    mapping rather than parse it a second time."""
    from hyla.search.workers import _ProxyWorkerImpl

    proxy = ProxyConfig.from_dict({**PROXY, "steps": 1, "device": "cpu"})
    parses.clear()
    worker = _ProxyWorkerImpl(device="cpu")
    layout = tiny_layout("attn", "attn").to_dict()
    assert worker.run(layout, proxy, None)["status"] == "ok"
    refused = worker.run(layout, proxy.to_dict(), None)
    assert refused["status"] == "failed" and "a ProxyConfig is expected" in refused["fail_reason"]
    assert parses == []


def test_loading_a_study_imports_no_torch() -> None:
    """Study and proxy configs are plain data: `hyla search status` and friends read them without torch."""
    import subprocess
    import sys

    code = ("import sys; from hyla.search.config import load_study_config; "
            f"load_study_config({str(REPO / 'examples' / 'quickstart.yaml')!r}); "
            "print(sorted(m for m in ('torch', 'numpy', 'fla') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
