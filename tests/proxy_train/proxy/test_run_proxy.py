"""Proxy training: a tiny run end to end, determinism, divergence/OOM/failure statuses, config errors, the CLI,
and that a softmax-attention model actually learns MQAR."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_layout
from hyla.config import ConfigError
from hyla.proxy_train.proxy.config import ProxyConfig, lr_at
from hyla.proxy_train.proxy.data import prepare_data
from hyla.proxy_train.proxy.result import ProxyResult
from hyla.proxy_train.proxy import run as T
from hyla.proxy_train.proxy.run import run_proxy

TEXT = {"source": "stdlib", "max_docs": 30}
MQAR = [{"task": "mqar", "seq_len": 32, "params": {"num_kv_pairs": 2}}]


def _suite(**over) -> dict:
    return {"family": "suite", "tasks": MQAR, "mix": 0.25, "eval_examples": 4, **over}


def _cfg(**over) -> ProxyConfig:
    base = dict(seq_len=32, batch_size=4, steps=4, lr=3e-3, warmup=1, text=TEXT, recall=_suite(), eval_batches=1,
                eval_batch_size=4, device="cpu")
    return ProxyConfig.from_dict({**base, **over})


@pytest.fixture(scope="module")
def layout():
    return tiny_layout("attn", "attn", name="attn-2")


def test_tiny_run_ok_with_all_fields(layout, tmp_path) -> None:
    result = run_proxy(layout, _cfg(), out_dir=tmp_path / "run", progress=False)
    assert result.status == "ok", result.fail_reason
    assert result.steps == 4 and result.tokens_seen == 4 * 4 * 32
    assert result.lm_val_loss is not None and 0 < result.lm_val_loss < 10
    assert 0.0 <= result.recall <= 1.0 and set(result.recall_tasks) == {"mqar@32x2"}
    assert result.proxy_family == "suite"
    from hyla.space.cost import inference_memory, param_count
    assert result.params == param_count(layout).total
    mem = inference_memory(layout, 2048)
    assert result.kv_bytes == mem.kv_bytes and result.state_bytes == mem.total_bytes
    assert result.context == 2048 and result.layout_key == layout.key() and result.layout_name == "attn-2"
    assert result.tokens_per_s > 0 and result.peak_mem_bytes > 0 and result.wall_s > 0
    assert result.versions["torch"] == torch.__version__
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert ProxyResult.from_dict(saved) == result
    assert ProxyConfig.load(tmp_path / "run" / "config.yaml") == _cfg()
    from hyla.space.layout import Layout
    assert Layout.load(tmp_path / "run" / "layout.yaml") == layout
    with pytest.raises(ConfigError, match="already holds a finished result"):
        run_proxy(layout, _cfg(), out_dir=tmp_path / "run", progress=False)


def test_same_seed_same_loss(layout) -> None:
    seen: list[int] = []
    a, b = (run_proxy(layout, _cfg(steps=3), progress=False, on_step=seen.append) for _ in range(2))
    assert seen == [0, 1, 2, 0, 1, 2]  # on_step: every step as it begins, run after run
    c = run_proxy(layout, _cfg(steps=3, seed=1), progress=False)
    assert a.train_loss == b.train_loss and a.lm_val_loss == b.lm_val_loss and a.recall == b.recall
    assert c.train_loss != a.train_loss


def test_nan_loss_is_diverged(layout, monkeypatch) -> None:
    real = T._Loop._loss
    calls = {"n": 0}

    def poisoned(self, logits, targets):
        calls["n"] += 1
        loss = real(self, logits, targets)
        return loss * float("nan") if calls["n"] > 2 else loss  # 2 loss terms per step: NaN from step 1

    monkeypatch.setattr(T._Loop, "_loss", poisoned)
    result = run_proxy(layout, _cfg(), progress=False)
    assert result.status == "diverged" and result.diverged_step == 1
    assert result.lm_val_loss is None and "non-finite" in result.fail_reason


def test_huge_lr_does_not_raise(layout) -> None:
    result = run_proxy(layout, _cfg(lr=1e6, grad_clip=0.0, steps=6), progress=False)
    assert result.status in ("ok", "diverged")


def test_oom_is_a_status(layout, monkeypatch) -> None:
    def boom(self, *a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(T.HylaLM, "forward", boom)
    result = run_proxy(layout, _cfg(), progress=False)
    assert result.status == "oom" and "out of memory" in result.fail_reason
    assert result.params > 0  # cost fields are still reported


def test_other_failure_is_a_status(layout, monkeypatch) -> None:
    def broken(self, *a, **k):
        raise RuntimeError("kernel exploded\nsecond line")

    monkeypatch.setattr(T.HylaLM, "forward", broken)
    result = run_proxy(layout, _cfg(), progress=False)
    assert result.status == "failed" and result.fail_reason == "RuntimeError: kernel exploded"


def test_bad_input_raises_before_work(tmp_path) -> None:
    small_vocab = tiny_layout("attn", vocab_size=128)
    with pytest.raises(ConfigError, match="vocab_size: 128 is smaller"):
        run_proxy(small_vocab, _cfg(), out_dir=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="unknown field 'stepz'"):
        ProxyConfig.from_dict({"preset": "tiny", "stepz": 3})
    with pytest.raises(ConfigError, match="exactly one of 'steps' and 'tokens'"):
        ProxyConfig.from_dict({"steps": 3, "tokens": 100})
    with pytest.raises(ConfigError, match="recall.mix"):
        ProxyConfig.from_dict({"steps": 3, "recall": _suite(mix=1.5)})
    with pytest.raises(ConfigError, match="did you mean 'phase_steps'"):
        ProxyConfig.from_dict({"steps": 3, "recall": _suite(phase_step=2)})
    with pytest.raises(ConfigError, match="recall.mix: 0.1 x batch_size 4 rounds to 0 rows"):
        _cfg(recall=_suite(mix=0.1))
    with pytest.raises(ConfigError, match="neither a preset"):
        ProxyConfig.load("huge")
    with pytest.raises(ConfigError, match="text.source"):
        run_proxy(tiny_layout("attn"), _cfg(text={"source": str(tmp_path / "missing")}), progress=False)


def test_load_yaml_preset_override(tmp_path) -> None:
    p = tmp_path / "p.yaml"
    p.write_text("preset: tiny\ntokens: 5000\nlr: 0.001\n")
    cfg = ProxyConfig.load(p)
    assert cfg.steps is None and cfg.tokens == 5000 and cfg.lr == 1e-3 and cfg.seq_len == 64
    assert cfg.total_steps == -(-5000 // (cfg.batch_size * cfg.seq_len))
    assert ProxyConfig.load("small").seq_len == 1024


def test_lr_schedule() -> None:
    cfg = _cfg(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(40, cfg) < lr_at(20, cfg)
    wsd = _cfg(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1, decay_fraction=0.2)  # stable until step 82
    assert lr_at(10, wsd) == lr_at(81, wsd) == 1.0 and lr_at(90, wsd) < 1.0
    assert lr_at(99, wsd) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ConfigError, match="decay_fraction"):
        _cfg(decay_fraction=0.0)
    with pytest.raises(ConfigError, match="init_std"):
        _cfg(init_std=-1.0)
    assert _cfg().init_std_for(64) == pytest.approx(0.08) and _cfg(init_std=0.02).init_std_for(64) == 0.02


def test_recall_phase_only_at_the_end(layout) -> None:
    data = prepare_data(layout, _cfg(recall=_suite(phase_steps=2, mix=0.5), batch_size=8))
    x, y, rx, ry = data.train_batch(0, with_recall=False)
    assert rx is None and x.shape == (8, 32)
    x, y, rx, ry = data.train_batch(3, with_recall=True)
    assert x.shape == (4, 32) and rx.shape == (4, 32) and (ry != -100).any()


def test_cli_train_writes_run_and_prints(tmp_path, capsys) -> None:
    from hyla.cli import main

    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(json.dumps(_cfg().to_dict()))
    layout = tmp_path / "layout.yaml"
    tiny_layout("attn", name="cli-attn").dump(layout)
    out = tmp_path / "run"
    assert main(["proxy", "train", str(layout), "--config", str(cfg), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["status"] == "ok" and printed["layout_name"] == "cli-attn"
    assert {p.name for p in out.iterdir()} >= {"result.json", "config.yaml", "layout.yaml"}
    assert main(["proxy", "train", str(layout), "--config", str(cfg), "--out", str(out)]) == 2  # finished run
    assert "already holds a finished result" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nbatchsize: 3\n")
    assert main(["proxy", "train", str(layout), "--config", str(bad)]) == 2
    assert "unknown field 'batchsize'" in capsys.readouterr().err
    assert main(["proxy", "train", str(layout), "--config", str(cfg), "--out", str(out), "--force"]) == 0
    assert "lm_val_loss" in capsys.readouterr().out  # the rich table


@pytest.mark.slow
def test_attention_learns_mqar_and_linear_ranks_lower() -> None:
    """Recall ranks layouts: 2-layer softmax attention (d_model 64) masters MQAR mixed into LM text, a pure-GLA model
    of the same size trained identically does not.

    Recipe: MQAR levels T=32 x {4, 8} pairs (16 keys, 16 values), 24 of 32 rows recall, 450 steps at a constant
    lr 1e-3 after warm-up, width-scaled init (std 0.08 at d 64). Measured on 2 cores with this exact recipe (seeds
    0, 1): attention 1.0 / 1.0 on both levels (20-24 s), LM val loss 6.4 -> 3.37; GLA 0.23-0.24 on 4 pairs,
    0.15-0.16 on 8 pairs (32-36 s; chance 1/16, copying some context value 1/P). Curves: attention sits at ~0.25
    ("some value of the context") until step ~250-350, then the induction circuit forms. The old recipe (init std
    0.02, cosine to 10 %) was still at 0.25-0.32 after 3000 steps (docs/proxy-recipe.md).
    """
    tasks = [{"task": "mqar", "seq_len": 32, "params": {"num_kv_pairs": p, "task_vocab": 32}} for p in (4, 8)]
    common = dict(recall=_suite(tasks=tasks, eval_examples=64, mix=0.75), eval_batch_size=32, eval_batches=2,
                  batch_size=32, lr=1e-3, warmup=10, min_lr_ratio=1.0, weight_decay=0.0)
    attn = tiny_layout("attn", "attn", d_model=64, num_heads=2, name="attn-mqar")
    first = run_proxy(attn, _cfg(steps=1, **common), progress=False)
    result = run_proxy(attn, _cfg(steps=450, **common), progress=False)
    assert result.status == "ok"
    assert result.lm_val_loss < first.lm_val_loss - 1.0
    assert first.recall < 0.1 and min(result.recall_tasks.values()) >= 0.9, (first.recall_tasks, result.recall_tasks)
    gla = run_proxy(tiny_layout("gla", "gla", d_model=64, num_heads=2, name="gla-mqar"), _cfg(steps=450, **common),
                    progress=False)
    assert gla.status == "ok" and abs(gla.params - result.params) < 0.05 * result.params
    assert gla.recall_tasks["mqar@32x8"] < result.recall_tasks["mqar@32x8"] - 0.4, gla.recall_tasks
