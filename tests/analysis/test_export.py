"""Export round trip: every exported file loads back and describes the recorded params and memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyla.analysis.export import export_trial, find_trial, fla_config
from hyla.analysis.study_data import load_study
from hyla.config import ConfigError
from hyla.space.layout import Layout
from study_fixtures import CONTEXT, build_study, tiny_layout



@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    return load_study(build_study(tmp_path_factory.mktemp("study")))


def _trial(study, layer_string: str):
    return next(t for t in study.select(rung=0, complete=True) if t.layout_string == layer_string)


def _check_common(out: Path, trial) -> Layout:
    from hyla.space.cost import inference_memory, param_count

    lay = Layout.load(out / "layout.yaml")
    assert lay.key() == trial.layout_key
    assert param_count(lay).total == trial.result["params"]
    mem = inference_memory(lay, CONTEXT)
    assert mem.kv_bytes == trial.result["kv_bytes"] and mem.total_bytes == trial.result["state_bytes"]
    assert mem.total_bytes == trial.values["memory_bytes"]

    from transformers import AutoConfig, AutoModelForCausalLM  # `import hyla` registered model_type "hyla"

    cfg = AutoConfig.from_pretrained(out)
    assert cfg.model_type == "hyla" and cfg.to_layout().key() == trial.layout_key
    model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == trial.result["params"]

    from hyla.proxy_train.train.full_spec import RunSpec

    spec = RunSpec.load(out / "full_run.yaml")
    assert spec.scale == "340m"
    info = json.loads((out / "trial.json").read_text())
    assert info["trial"] == trial.number and info["result"]["params"] == trial.result["params"]
    return lay


def test_export_hybrid_with_fla_config(study, tmp_path: Path) -> None:
    trial = _trial(study, "GGGA")
    res = export_trial(study, trial, tmp_path / "ex")
    assert all("norm_eps" in n for n in res.notes)  # fla's one norm_eps (see test_analysis_export_weights)
    _check_common(tmp_path / "ex", trial)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tmp_path / "ex" / "fla")  # fla's own config class
    assert type(cfg).__name__ == "GLAConfig"
    assert cfg.attn["layers"] == [3] and cfg.attn["num_heads"] == 2 and cfg.attn["window_size"] is None
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size) == (32, 4, 64, 64)
    assert (cfg.num_heads, cfg.expand_k, cfg.expand_v) == (1, 0.5, 1.0)
    assert not (tmp_path / "ex" / "fla_config_unsupported.txt").exists()
    with pytest.raises(ConfigError, match="already holds an export"):
        export_trial(study, trial, tmp_path / "ex")


def test_hybrid_fla_model_has_hyla_parameter_shapes(study, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fla's Attention refuses to construct without flash-attn (absent on CPU); only its constructor's guard is
    bypassed here, to count parameters. Same multiset of tensor shapes = same weights up to renaming."""
    import fla.layers.attn
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.setattr(fla.layers.attn, "flash_attn_func", object())
    for layer_string in ("GGGA", "NNNA", "AAAA"):
        trial = _trial(study, layer_string)
        out = tmp_path / layer_string
        export_trial(study, trial, out)
        fla_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out / "fla"))
        hyla_model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
        shapes = sorted(tuple(p.shape) for p in fla_model.parameters())
        assert shapes == sorted(tuple(p.shape) for p in hyla_model.parameters())
        assert sum(p.numel() for p in fla_model.parameters()) == trial.result["params"]


def test_export_pure_linear_builds_fla_model_with_same_params(study, tmp_path: Path) -> None:
    trial = _trial(study, "GGGG")
    export_trial(study, trial, tmp_path / "ex")
    _check_common(tmp_path / "ex", trial)
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(tmp_path / "ex" / "fla")
    model = AutoModelForCausalLM.from_config(cfg)  # pure linear fla models build on CPU (no flash-attn)
    assert sum(p.numel() for p in model.parameters()) == trial.result["params"]


@pytest.mark.parametrize("kind", ["gla", "hgrn", "hgrn2", "retnet", "deltanet", "gdn"])
def test_fla_config_param_counts_match_cost(kind: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from hyla.analysis.export import _check_fla
    from hyla.space.cost import param_count

    bounds = [True, False] if kind in ("hgrn", "hgrn2") else [None]  # fla's HGRN models' use_lower_bound
    for bound in bounds:
        layer = kind if bound is None else {"mixer": kind, "options": {"lower_bound": bound}}
        lay = tiny_layout([layer] * 2)
        cfg, why = fla_config(lay)
        assert why is None and cfg.get("use_lower_bound") == bound
        full = _check_fla(cfg)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(full.pop("model_type"), **full))
        assert sum(p.numel() for p in model.parameters()) == param_count(lay).total


def test_export_headwise_writes_reason(study, tmp_path: Path) -> None:
    trial = _trial(study, "GgGg")  # head-wise gla layers are lower-case g
    export_trial(study, trial, tmp_path / "ex")
    _check_common(tmp_path / "ex", trial)
    why = (tmp_path / "ex" / "fla_config_unsupported.txt").read_text()
    assert "head-wise" in why and "window" in why
    assert not (tmp_path / "ex" / "fla").exists()


def test_fla_config_refusals() -> None:
    assert "mixed linear mixers" in fla_config(tiny_layout(["gla", "gdn", "attn", "gla"]))[1]
    assert "mamba2" in fla_config(tiny_layout(["mamba2", "attn"]))[1]
    odd = Layout.from_dict({**tiny_layout(["gla"]).to_dict(),
                            "layers": [{"mixer": "gla", "options": {"gate_low_rank_dim": 8}}, "attn"]})
    assert "gate_low_rank_dim" in fla_config(odd)[1]
    diff = Layout.from_dict({**tiny_layout(["gla"]).to_dict(),
                             "layers": [{"mixer": "gla", "options": {"expand_v": 2.0}}, "gla"]})
    assert "different options" in fla_config(diff)[1]
    cfg, why = fla_config(tiny_layout(["attn", "attn"]))
    assert why is None and cfg["model_type"] == "transformer"


def test_find_trial_errors(study) -> None:
    assert find_trial(study, 0).rung == 1  # trial 0 was promoted: the highest rung wins
    assert find_trial(study, 0, rung=0).rung == 0
    with pytest.raises(ConfigError, match="--trial: 99"):
        find_trial(study, 99)
