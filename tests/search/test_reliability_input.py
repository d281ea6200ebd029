"""Bad input through the real CLI: exit code 2, ONE stderr line naming file + field + what is allowed, nothing written.

Every case runs ``hyla.cli.main`` in-process on files under ``tmp_path`` and snapshots the whole directory (paths,
sizes, contents, mtimes) before and after: a refused command must not create a run directory, a journal, a
resolved ``study.yaml`` or a proxy run directory, and must not touch an existing study's files. None of these
cases may reach training or start Ray, so the whole file runs in seconds.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from hyla.cli import main
from hyla.config import dump_yaml
from test_search_helpers import PROXY, SPACE, study_dict, write_study


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``root`` -> (size, mtime_ns, content); directories as empty entries."""
    out: dict[str, tuple[int, int, bytes]] = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    return out


def refused(argv: list[str], root: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and one stderr line holding every needle, and no change under ``root``."""
    before = snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}, stderr: {err}"
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    assert err.startswith("hyla: error: ")
    for n in needles:
        assert n in err, f"{n!r} not in {err!r}"
    after = snapshot(root)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before)) or 'contents/mtimes'}"
    return err


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def study(tmp: Path, name: str = "bad", **kw: Any) -> Path:
    """A study YAML that would be valid without ``kw``; its run_dir lies inside ``tmp``."""
    return write_study(tmp, name, **kw)


def layout_yaml(tmp: Path, name: str = "layout.yaml", **kw: Any) -> Path:
    data: dict[str, Any] = {"layers": ["gla", "attn"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64,
                            "num_heads": 2}
    data.update(kw)
    path = tmp / name
    dump_yaml(data, path)
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- malformed YAML -------------------------------------------------------------------------------------------
def test_malformed_study_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "broken.yaml", "name: broken\nspace: [gla, attn\nn_trials: 2\n")
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "malformed YAML", "line")


def test_malformed_layout_yaml_as_seed_and_in_proxy_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay = write(tmp_path, "lay.yaml", "layers: [gla, attn\nd_model: 32\n")
    path = study(tmp_path, seeds=[str(lay)])
    refused(["search", "run", str(path)], tmp_path, capsys, str(lay), "malformed YAML")
    refused(["proxy", "train", str(lay), "--out", str(tmp_path / "run")], tmp_path, capsys, str(lay),
            "malformed YAML")


# -- unknown keys (typos) -------------------------------------------------------------------------------------
def test_typo_in_nested_study_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, ray={"num_worker": 2})
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "ray", "'num_worker'", "num_workers")


def test_typo_in_proxy_file_of_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proxy = tmp_path / "proxy.yaml"
    dump_yaml({**PROXY, "bach_size": 4}, proxy)
    path = study(tmp_path, rungs=[{"proxy": str(proxy)}])
    refused(["search", "run", str(path)], tmp_path, capsys, str(proxy), "'bach_size'", "batch_size")
    # the same proxy file given to `hyla proxy train`
    refused(["proxy", "train", "gla-pure@tiny", "--config", str(proxy), "--out", str(tmp_path / "run")], tmp_path,
            capsys, str(proxy), "'bach_size'", "batch_size")


def test_typo_in_layout_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay = layout_yaml(tmp_path, d_modle=32)
    path = study(tmp_path, seeds=[str(lay)])
    refused(["search", "run", str(path)], tmp_path, capsys, str(lay), "'d_modle'", "d_model")
    refused(["proxy", "train", str(lay), "--out", str(tmp_path / "run")], tmp_path, capsys, str(lay), "'d_modle'")


def test_typo_in_space_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, space={**SPACE, "placement": ["uniform_last"]})
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "'placement'", "placements")


# -- layout/space semantics -----------------------------------------------------------------------------------
def test_unknown_mixer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, space={**SPACE, "mixers": ["gla", "glaa"]})
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "space", "'glaa'", "gla, ")
    lay = layout_yaml(tmp_path, layers=["glaa", "attn"])
    refused(["proxy", "train", str(lay), "--out", str(tmp_path / "run")], tmp_path, capsys, str(lay), "'glaa'",
            "hgrn")


def test_attention_index_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, seeds=["gla-at1,99@tiny"])
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "seeds[0]", "99", "out of range", "[0, ")


def test_head_counts_that_do_not_divide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lay = layout_yaml(tmp_path, num_heads=3)  # 32 % 3 != 0
    refused(["proxy", "train", str(lay), "--out", str(tmp_path / "run")], tmp_path, capsys, str(lay),
            "num_heads", "3", "d_model 32")
    lay = layout_yaml(tmp_path, "kv.yaml", num_heads=4, num_kv_heads=3)
    path = study(tmp_path, seeds=[str(lay)])
    refused(["search", "run", str(path)], tmp_path, capsys, str(lay), "num_kv_heads", "3", "num_heads 4")


def test_ratio_that_does_not_fit_the_depth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, space={"scale": "tiny", "n_layers": 4, "mixers": ["gla"], "ratios": [3, 9]})
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "ratios", "9", "depth 4", "1..4")


# -- unreachable services / missing data -----------------------------------------------------------------------
def test_unreachable_storage_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, storage="postgresql://u@127.0.0.1:1/db")
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "storage", "127.0.0.1:1")
    refused(["search", "status", "bad", "--storage", "postgresql://u@127.0.0.1:1/db"], tmp_path, capsys,
            "--storage", "127.0.0.1:1")


def test_ray_address_that_does_not_answer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path)
    refused(["search", "run", str(path), "--address", "127.0.0.1:1"], tmp_path, capsys, str(path),
            "ray.address", "'127.0.0.1:1'", "does not answer")
    port = _closed_port()
    path = study(tmp_path, "bad2", ray={"address": f"ray://127.0.0.1:{port}"})
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "ray.address", str(port))


def test_dataset_path_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "no" / "corpus.txt")
    proxy = {**PROXY, "text": {"source": missing}}
    path = study(tmp_path, rungs=[{"proxy": proxy}])
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "rungs[0].proxy", "text.source", missing,
            "does not exist")


def test_objective_the_proxy_does_not_measure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study(tmp_path, objectives=["recall_auc", "memory_bytes"])  # the tiny proxy mixes recall into the LM run
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "recall_auc", "rungs[0].proxy",
            "needs recall: {family: probe}")
    probe_only = {**PROXY, "train_lm": False,
                  "recall": {"family": "probe", "seq_len": 16, "pairs": [1, 2], "steps": 2, "batch_size": 4}}
    path = study(tmp_path, "bad2", objectives=["lm_loss", "recall"], rungs=[{"proxy": probe_only}])
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "lm_loss", "rungs[0].proxy",
            "recall, recall_auc", "train_lm: true")


def test_tokenizer_without_local_copy_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path.parent / "empty-hf-home"))  # no cached copy can match
    name = "hyla-test-org/no-such-tokenizer"
    proxy = {**PROXY, "tokenizer": name}
    path = study(tmp_path, rungs=[{"proxy": proxy}])
    refused(["search", "run", str(path)], tmp_path, capsys, str(path), "rungs[0].proxy", "tokenizer", name,
            "not found locally")


# -- an existing study ----------------------------------------------------------------------------------------
def test_existing_study_with_another_space_is_refused_and_untouched(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from hyla.search.config import load_study_config
    from hyla.search.prepare import prepare
    from hyla.search.storage import open_study

    # the first study: created exactly as `hyla search run` creates it, with one finished trial in it
    first = study(tmp_path, "same")
    cfg = load_study_config(first)
    prep = prepare(cfg)
    st = open_study(prep.storage, cfg.study_name(0), cfg.directions, prep.study_attrs(0), where=cfg.where)
    trial = st.ask()
    st.tell(trial, [3.0, 0.5, 1000.0])
    results = cfg.run_path / "results.json"  # stands for any finished output of the first study
    results.write_text('{"done": true}\n')
    assert (cfg.run_path / "study.journal").exists() and (cfg.run_path / "study.yaml").exists()

    other = tmp_path / "same_other.yaml"
    dump_yaml({**study_dict(tmp_path, "same"), "space": {**SPACE, "mixers": ["gla"]}}, other)
    err = refused(["search", "run", str(other)], tmp_path, capsys, str(other), "name", "'same/rung0'",
                  "another search space")
    assert "pick a new name" in err
    other_obj = tmp_path / "same_obj.yaml"
    dump_yaml({**study_dict(tmp_path, "same"), "objectives": ["lm_loss", "params"]}, other_obj)
    refused(["search", "run", str(other_obj)], tmp_path, capsys, str(other_obj), "objectives", "'same/rung0'")
    assert len(st.get_trials()) == 1


def test_subprocess_exit_code_and_single_line(tmp_path: Path) -> None:
    """The installed entry point behaves like main(): exit 2, one line, no traceback."""
    import subprocess
    import sys

    path = study(tmp_path, space={**SPACE, "mixers": ["mamba3"]})
    before = snapshot(tmp_path)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([sys.executable, "-m", "hyla", "search", "run", str(path)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "'mamba3'" in lines[0], proc.stderr
    assert snapshot(tmp_path) == before
