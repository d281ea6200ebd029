"""A local HF Llama becomes hyla's Transformer with the same logits; what hyla cannot compute is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.llama import llama_layout, load_llama


def _tiny_llama(tmp_path: Path, **overrides: object) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0}, **overrides)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms off their all-ones init, so a swapped norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


@pytest.mark.parametrize("tied", [False, True])
def test_llama_logits_match(tmp_path: Path, tied: bool) -> None:
    from transformers import AutoModelForCausalLM

    path = _tiny_llama(tmp_path, tie_word_embeddings=tied)
    model = load_llama(path)
    assert model.layout.kv_heads == 2 and model.layout.rope_theta == 500.0 and model.layout.norm_eps == 1e-5
    ids = torch.randint(0, 300, (2, 24))
    ref = AutoModelForCausalLM.from_pretrained(str(path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_unsupported_llamas_are_refused(tmp_path: Path) -> None:
    base = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
            "vocab_size": 300, "intermediate_size": 96}
    assert llama_layout(base).num_kv_heads == 4
    with pytest.raises(ConfigError, match="attention_bias"):
        llama_layout({**base, "attention_bias": True})
    with pytest.raises(ConfigError, match="rope_type 'linear'"):
        llama_layout({**base, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    with pytest.raises(ConfigError, match="model_type 'gpt2'"):
        llama_layout({**base, "model_type": "gpt2"})
    with pytest.raises(ConfigError, match="no config.json"):
        load_llama(tmp_path)
