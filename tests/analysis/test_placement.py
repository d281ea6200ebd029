"""`hyla analysis placement` end to end: a tiny hyla model trained here and a tiny random Llama built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hyla.analysis.placement import PlacementRequest, load_model, run_placement
from hyla.config import ConfigError
from hyla.space.layout import Layout
from hyla.space.presets import SCALES

#: the shortest stages that still run every step of the command
QUICK = {"levels": "retrofit-tiny", "transfer_steps": 4, "supernet_steps": 4, "eval_examples": 8, "device": "cpu"}


@pytest.fixture(scope="module")
def hyla_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-layer attention model trained 30 steps on the level set's rows, saved as hyla saves models."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM
    from hyla.proxy_train.model.loss import token_loss
    from hyla.proxy_train.retrofit.data import RetrofitData
    from hyla.proxy_train.train.config import TextConfig

    torch.manual_seed(0)
    layout = SCALES["tiny"].layout(["attn"] * 4, name="tiny-transformer")
    hf = HylaForCausalLM(HylaConfig(layout=layout.to_dict()))
    data = RetrofitData("retrofit-tiny", layout.vocab_size, 128, TextConfig(max_docs=40), pool_rows=64,
                        eval_examples=8, eval_text_rows=4)
    opt = torch.optim.AdamW(hf.model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(30):
        batch = data.batch(rng, 8, 4)
        loss = token_loss(hf.model(batch.inputs)[0], batch.targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = tmp_path_factory.mktemp("model") / "tiny"
    hf.save_pretrained(out)
    return out


def test_placement_on_a_trained_hyla_model(hyla_model: Path, tmp_path: Path) -> None:
    req = PlacementRequest(model=str(hyla_model), attention_layers=2, mixer="gla", beam=2, out=str(tmp_path / "p"),
                           cache_dir=str(tmp_path / "cache"), **QUICK)
    record = run_placement(req, log=lambda _: None)
    layout = Layout.load(tmp_path / "p" / "layout.yaml")
    assert len(layout.attention_layers) == 2 and list(layout.attention_layers) == record["attention"]
    assert set(layout.linear_mixers) == {"gla"}
    saved = json.loads((tmp_path / "p" / "placement.json").read_text())
    assert len(saved["importance"]) == 4 and {"kl", "recall_drop"} <= set(saved["importance"][0])
    assert set(saved["candidates"]) == {"searched", "uniform", "importance"}
    assert saved["candidates"]["uniform"]["attention"] == [1, 3]
    assert len(saved["trace"]) == 2 and len(saved["trace"][0]) == 2
    page = (tmp_path / "p" / "report.html").read_text()
    assert "Per-layer importance" in page and "plotly" in page.lower() and '<svg class="layers"' in page
    with pytest.raises(ConfigError, match="already holds"):
        run_placement(req, log=lambda _: None)


def test_placement_on_a_local_random_llama(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    model, source = load_model(tmp_path / "llama")
    assert source == "llama" and model.layout.kv_heads == 1
    req = PlacementRequest(model=str(tmp_path / "llama"), attention_layers=1, mixer="gdn", beam=1,
                           out=str(tmp_path / "p"), cache_dir=str(tmp_path / "cache"), **QUICK)
    record = run_placement(req, log=lambda _: None)
    assert len(record["attention"]) == 1 and record["source"] == "llama"
    assert Layout.load(tmp_path / "p" / "layout.yaml").num_kv_heads == 1


def test_bad_requests_fail_before_work(hyla_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="attention-layers: 9"):
        run_placement(PlacementRequest(model=str(hyla_model), attention_layers=9, out=str(tmp_path / "a")))
    with pytest.raises(ConfigError, match="objective"):
        run_placement(PlacementRequest(model=str(hyla_model), attention_layers=1, objective="speed",
                                       out=str(tmp_path / "b")))
    with pytest.raises(ConfigError, match="does not exist"):
        run_placement(PlacementRequest(model=str(tmp_path / "none"), attention_layers=1, out=str(tmp_path / "c")))
