"""Cost accounting: parameter counts, FLOPs, inference memory."""

from __future__ import annotations

import pytest

from hyla.config import ConfigError
from hyla.space.cost import (effective_context, flops_per_token, human_bytes, inference_memory, layer_memory,
                             mixer_params, param_count)
from hyla.space.layout import Layout
from hyla.space.mixer_kinds import get_mixer_kind


def _layout(layers, d=64, heads=4, kv=None, vocab=100, mlp=96) -> Layout:
    return Layout(layers=tuple(layers), d_model=d, vocab_size=vocab, mlp_hidden=mlp, num_heads=heads,
                  num_kv_heads=kv)


def test_transformer_340m_kv_is_96_kib_per_token() -> None:
    t = _layout(["attn"] * 24, d=1024, heads=16, vocab=32000, mlp=2816)
    assert inference_memory(t, 1).kv_bytes == 96 * 1024
    assert inference_memory(t, 2048).total_bytes == 2048 * 96 * 1024
    assert inference_memory(t, 2048, "float32").kv_bytes == 2048 * 192 * 1024


def test_transformer_params_by_hand() -> None:
    d, V, m, n = 64, 100, 96, 3
    t = _layout(["attn"] * n, d=d, heads=4, kv=2, vocab=V, mlp=m)
    hd = 16
    attn = 2 * d * d + 2 * d * 2 * hd  # q, o full; k, v with 2 kv heads
    block = attn + 2 * d + 3 * d * m
    pc = param_count(t)
    assert pc.per_layer == (block,) * n
    assert pc.embedding == pc.head == V * d
    assert pc.non_embedding == n * block + d
    assert pc.total == 2 * V * d + n * block + d


def test_headwise_and_linear_mixer_params() -> None:
    t = _layout(["gla", "gla+a2@8", "attn"], d=64, heads=4)
    gla = get_mixer_kind("gla").formula(64, {}).params
    assert mixer_params(t, 0) == gla
    assert mixer_params(t, 1) == gla + 4 * 64 * (2 * 16) + 2 * 64
    assert mixer_params(t, 2) == 4 * 64 * 64
    with pytest.raises(ConfigError, match=r"out of range; expected \[0, 3\)"):
        mixer_params(t, 3)


def test_layer_memory_windows_and_states() -> None:
    t = _layout(["gdn", "gla+a2@8", "attn@16", "attn", "hgrn"], d=64, heads=4)
    L, b = 100, 2
    gdn = get_mixer_kind("gdn").formula(64, {})
    m0 = layer_memory(t, 0, L)
    assert (m0.kv_bytes, m0.recurrent_bytes, m0.conv_bytes) == (0, gdn.recurrent_bytes(b), gdn.conv_bytes(b))
    assert layer_memory(t, 1, L).kv_bytes == 2 * 2 * 16 * 8 * b  # 2 heads, window 8
    assert layer_memory(t, 1, 5).kv_bytes == 2 * 2 * 16 * 5 * b  # shorter than the window
    assert layer_memory(t, 2, L).kv_bytes == 2 * 4 * 16 * 16 * b
    assert layer_memory(t, 3, L).kv_bytes == 2 * 4 * 16 * L * b
    assert layer_memory(t, 4, L, "float32").recurrent_bytes == 64 * 4  # HGRN: model dtype
    assert layer_memory(t, 4, L, "bfloat16").recurrent_bytes == 64 * 2
    rep = inference_memory(t, L)
    assert rep.kv_bytes == sum(m.kv_bytes for m in rep.layers)
    assert rep.total_bytes == rep.kv_bytes + rep.state_bytes
    assert rep.state_bytes == sum(m.recurrent_bytes + m.conv_bytes for m in rep.layers)
    with pytest.raises(ConfigError, match="dtype"):
        inference_memory(t, L, "int8")
    with pytest.raises(ConfigError, match="context"):
        inference_memory(t, -1)


def test_pure_linear_memory_is_constant_in_context() -> None:
    t = _layout(["gla"] * 4)
    assert inference_memory(t, 16).total_bytes == inference_memory(t, 4096).total_bytes > 0


def test_effective_context() -> None:
    assert effective_context(4, None) == pytest.approx(2.5)  # (1+2+3+4)/4
    assert effective_context(4, 2) == pytest.approx((1 + 2 + 2 + 2) / 4)
    assert effective_context(4, 100) == pytest.approx(2.5)


def test_flops_transformer_by_hand() -> None:
    d, V, m, T = 64, 100, 96, 32
    t = _layout(["attn"] * 2, d=d, heads=4, vocab=V, mlp=m)
    dense = 2 * (4 * d * d + 3 * d * m)
    expected = 6 * dense + 6 * V * d + 2 * 12 * 4 * 16 * (T + 1) / 2
    assert flops_per_token(t, T) == pytest.approx(expected)
    windowed = _layout(["attn@4"] * 2, d=d, heads=4, vocab=V, mlp=m)
    assert flops_per_token(windowed, T) < flops_per_token(t, T)
    with pytest.raises(ConfigError, match="seq_len"):
        flops_per_token(t, 0)


def test_flops_linear_independent_of_seq_len_per_token() -> None:
    t = _layout(["gla", "deltanet", "hgrn", "mamba2"])
    assert flops_per_token(t, 64) == flops_per_token(t, 4096)
    assert flops_per_token(t, 64) > 6 * 3 * 64 * 96 * 4


def test_human_bytes() -> None:
    assert human_bytes(96 * 1024) == "96.0 KiB"
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 2**20) == "3.0 MiB"


def test_space_imports_no_heavy_packages() -> None:
    """Cost accounting and the search space are imported by every worker and the CLI: keep them light."""
    import subprocess
    import sys

    code = ("import sys, hyla.space, hyla.space.cli, hyla.space.search_space; "
            "print(sorted(m for m in ('torch', 'optuna', 'rich', 'fla', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
