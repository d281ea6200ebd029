"""A local HF Llama-family causal LM as hyla's all-attention `HylaLM` (same logits), for placement search.

hyla's Transformer is Llama's: pre-norm blocks of RMSNorm -> attention -> residual, RMSNorm -> SwiGLU -> residual,
a final RMSNorm and an (untied) head. The conventions that must agree, and do:

- RoPE: Llama's ``rotate_half`` form over the whole head dim (HF checkpoints store q/k already permuted for it) is
  hyla's non-interleaved RoPE (`hyla.proxy_train.model.mixers.attention`), base ``rope_theta``; only the default
  rope type is accepted (no scaling: its frequencies differ).
- GQA: ``num_key_value_heads`` is the layout's ``num_kv_heads``; query head h reads kv head ``h // (H / Hkv)`` in
  both.
- Norms: ``RMSNorm(x) = x / sqrt(mean(x^2) + eps) * w`` in both (``rms_norm_eps`` -> ``norm_eps``).
- Attention scale 1/sqrt(head_dim), no biases, SiLU gate: anything else (``attention_bias``, ``mlp_bias``, another
  ``hidden_act``, ``head_dim`` other than hidden/heads, a sliding window) is refused with a ConfigError.
- Tied embeddings become an untied copy (hyla's head is its own matrix).

Weight names: ``model.embed_tokens`` -> ``embeddings``; ``model.layers.N.self_attn.{q,k,v,o}_proj`` ->
``blocks.N.mixer.*``; ``input_layernorm`` -> ``mixer_norm``; ``post_attention_layernorm`` -> ``mlp_norm``;
``mlp.{gate,up,down}_proj`` -> ``mlp.*``; ``model.norm`` -> ``norm``; ``lm_head`` -> ``lm_head``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM
from hyla.space.layout import ATTN, Layout

#: ``model_type`` values whose weights and math are Llama's
LLAMA_TYPES = ("llama", "mistral")


def _rope_theta(cfg: dict[str, Any], where: str) -> float:
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ConfigError(f"{where}: rope_type {kind!r} is not supported; hyla's RoPE is the default (unscaled) one")
    theta = rope.get("rope_theta", cfg.get("rope_theta"))
    return float(theta if theta is not None else 10000.0)


def llama_layout(cfg: dict[str, Any], where: str = "config.json") -> Layout:
    """The all-attention `Layout` of a Llama-family config (a ``config.json`` mapping); ConfigError for anything
    hyla's Transformer does not compute the same way (module docstring)."""
    kind = cfg.get("model_type")
    if kind not in LLAMA_TYPES:
        raise ConfigError(f"{where}: model_type {kind!r} is not supported; expected one of {', '.join(LLAMA_TYPES)}")
    d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    for name, ok in (("attention_bias", not cfg.get("attention_bias")), ("mlp_bias", not cfg.get("mlp_bias")),
                     ("hidden_act", cfg.get("hidden_act", "silu") == "silu"),
                     ("head_dim", cfg.get("head_dim") in (None, d // heads) and d % heads == 0),
                     ("sliding_window", cfg.get("sliding_window") is None)):
        if not ok:
            raise ConfigError(f"{where}: {name} {cfg.get(name)!r} is not supported (hyla's attention has no biases, "
                              f"a SiLU MLP, head_dim = hidden_size / num_attention_heads and no window)")
    n = int(cfg["num_hidden_layers"])
    return Layout(layers=(ATTN,) * n, d_model=d, vocab_size=int(cfg["vocab_size"]),
                  mlp_hidden=int(cfg["intermediate_size"]), num_heads=heads,
                  num_kv_heads=int(cfg.get("num_key_value_heads") or heads), rope_theta=_rope_theta(cfg, where),
                  norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), name=f"{Path(where).parent.name or kind}")


def _rename(key: str) -> str | None:
    parts = key.split(".")
    if key == "lm_head.weight":
        return key
    if parts[0] != "model":
        return None
    if parts[1] == "embed_tokens":
        return "embeddings.weight"
    if parts[1] == "norm":
        return "norm.weight"
    if parts[1] == "layers":
        i, rest = parts[2], ".".join(parts[3:])
        for old, new in (("self_attn.", "mixer."), ("input_layernorm.", "mixer_norm."),
                         ("post_attention_layernorm.", "mlp_norm."), ("mlp.", "mlp.")):
            if rest.startswith(old):
                return f"blocks.{i}.{new}{rest[len(old):]}"
    return None


def load_llama(model_dir: str | Path) -> HylaLM:
    """A local Llama-family model directory (``config.json`` + weights) as an fp32 `HylaLM` with the same logits.

    Raises:
        ConfigError: no such directory or config, an unsupported architecture (module docstring), or weights whose
            names do not map onto hyla's.
    """
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"MODEL: {path} holds no config.json (expected a local HF model directory)")
    cfg = json.loads((path / "config.json").read_text())
    layout = llama_layout(cfg, str(path / "config.json"))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, torch_dtype=torch.float32)
    state: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        new = _rename(key)
        if new is None:
            if key.endswith("rotary_emb.inv_freq"):
                continue
            raise ConfigError(f"MODEL: {path}: weight {key!r} has no place in hyla's Transformer")
        state[new] = value
    state["lm_head.weight"] = hf.get_output_embeddings().weight.detach().clone()  # tied or not
    model = HylaLM(layout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"MODEL: {path}: weights do not fit {layout.n_layers} Llama layers (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model.eval()
