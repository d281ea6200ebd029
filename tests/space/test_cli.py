"""`hyla space show|grid` through hyla.cli.main."""

from __future__ import annotations

import json
import re

import pytest

from hyla.cli import main
from hyla.config import ConfigError
from hyla.space.cli import parse_contexts
from hyla.space.cost import inference_memory, param_count
from hyla.space.presets import resolve_preset


def test_show_json(capsys) -> None:
    assert main(["space", "show", "gla-6:1@tiny", "--context", "128,1k", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    layout = resolve_preset("gla-6:1@tiny")
    assert out["key"] == layout.key() and out["contexts"] == [128, 1024]
    assert out["params"]["total"] == param_count(layout).total
    assert out["memory"]["1024"]["total_bytes"] == inference_memory(layout, 1024).total_bytes
    assert [l["letter"] for l in out["layers"]].count("A") == 4
    assert out["layers"][5]["kv_bytes"]["128"] == 2 * 2 * 16 * 128 * 2
    assert out["flops_per_token"]["seq_len"] == 128 and out["flops_per_token"]["training"] > 0


def test_show_transformer_340m_96_kib(capsys) -> None:
    assert main(["space", "show", "transformer@340m", "--context", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory"]["1"]["kv_bytes"] == 96 * 1024


def test_show_table_and_yaml(tmp_path, capsys) -> None:
    path = tmp_path / "l.yaml"
    resolve_preset("gdn-3:1@tiny").with_layers(["gdn+a1@64"] * 3 + ["attn"], name="").dump(path)
    assert main(["space", "show", str(path), "--context", "2048,32k"]) == 0
    text = capsys.readouterr().out
    for needle in ("per layer", "KV @32768", "gdn+a1@64", "non-embedding", "FLOPs/token", "KiB", " nnnA\n",
                   "\nlayer letters: A attention, n gdn + softmax heads (head-wise)\n"):
        assert needle in text


def test_grid(capsys) -> None:
    assert main(["space", "grid", "--scale", "tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["layouts"]) == 31 and out["layouts"][-1]["name"] == "transformer@tiny"
    assert main(["space", "grid", "--scale", "tiny", "--convention", "literal"]) == 0
    text = capsys.readouterr().out
    assert "gdn-6:1:literal@tiny" in text
    assert "\nlayer letters: A attention, R hgrn, T retnet, G gla, 2 hgrn2, D deltanet, N gdn\n" in text


@pytest.mark.parametrize("argv,match", [
    (["space", "show", "foo-6:1@tiny"], "unknown mixer 'foo'"),
    (["space", "show", "gla-6:1@tiny", "--context", "abc"], "--context: 'abc'"),
    (["space", "show", "gla-6:1@tiny", "--dtype", "int4"], "unknown dtype 'int4'"),
    (["space", "show", "missing.yaml"], "file not found"),
    (["space", "grid", "--context", "0"], "--context: '0'"),
])
def test_bad_input_exits_2(argv, match, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hyla: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(match, err)


def test_parse_contexts() -> None:
    assert parse_contexts("2048, 32k") == [2048, 32768]
    with pytest.raises(ConfigError):
        parse_contexts("2048,")
