"""Exported weights: a checkpoint saved as `hyla train` saves it -> export -> fla's model (strict) and hyla's model.

fla 0.6.0 runs no model forward on a plain CPU: every layer calls Triton kernels (GLA's recurrent/chunk ops, HGRN's
swiglu, HGRN-2's swish, RetNet's rotary, the delta rules' short conv, the fused norms), and its Attention needs
flash-attn. Triton's interpreter (``TRITON_INTERPRET=1``) runs those same kernels on the CPU, slowly, so the logits
test runs fla's own model through `benchmarks/gpu_export_check.py --device cpu` in a subprocess (the interpreter
must be on before triton is imported). For a hybrid, flash-attn's two functions are replaced by causal SDPA there;
the GPU test runs fla's real kernels and flash-attn for every kind and hybrid.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hyla.analysis.export import export_checkpoint, export_trial, loading_instructions
from hyla.analysis.export_weights import fla_state_dict, load_run_weights
from hyla.cli import main
from hyla.config import ConfigError
from hyla.space.layout import Layout
from conftest import REPO

CHECK = REPO / "benchmarks" / "gpu_export_check.py"
PURE = ["gla", "hgrn", "hgrn2", "retnet", "deltanet", "gdn"]


def tiny(layers: tuple[str, ...], norm_eps: float = 1e-5) -> dict:
    """A 32-wide layout; norm_eps 1e-5 = fla's layers' own inner-norm eps, so fla's model has hyla's math exactly
    (fla's config has one norm_eps for block norms and mixer norms, see `hyla.analysis.export.fla_inexact`)."""
    return Layout(layers=layers, d_model=32, vocab_size=64, mlp_hidden=64, num_heads=2, norm_eps=norm_eps,
                  name="-".join(layers)).to_dict()


def save_run(run_dir: Path, layout: dict, step: int = 7, seed: int = 0) -> torch.nn.Module:
    """A run directory as `hyla train` leaves it mid-run: spec.yaml and one Ray checkpoint (state.pt + meta), the
    model built by ``full_loop.build_model`` and its state taken with ``get_state_dict(full_state_dict=True)``
    as ``full_loop.save_checkpoint`` does. Every parameter is perturbed (norm weights too, which start at 1),
    so a swapped name shows in the logits."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    from hyla.proxy_train.train.full_spec import CKPT_META, CKPT_STATE, RunSpec
    from hyla.proxy_train.train.full_loop import build_model

    spec = RunSpec.from_dict({"layout": layout, "scale": "custom", "tokens": 4096, "seq_len": 64,
                              "global_batch_tokens": 256, "micro_batch": 4, "tokenizer": "byte",
                              "out_dir": str(run_dir), "num_workers": 1, "use_gpu": False, "bf16": False})
    run_dir.mkdir(parents=True)
    spec.resolved().dump(run_dir / "spec.yaml")
    torch.manual_seed(seed)
    model = build_model(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(model.parameters())
    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    ckpt = run_dir / "ray" / "attempt_1" / f"checkpoint_{step:06d}"
    ckpt.mkdir(parents=True)
    torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": {}, "step": step, "cursor": 0, "rng": []},
               ckpt / CKPT_STATE)
    meta = {"step": step, "cursor": 0, "state_bytes": (ckpt / CKPT_STATE).stat().st_size, "time": 0.0}
    (ckpt / CKPT_META).write_text(json.dumps(meta))
    return model.eval()


def fla_model_from(export: Path, monkeypatch: pytest.MonkeyPatch):
    """fla's model from ``export/fla/config.json`` (construction only: flash-attn's guard bypassed)."""
    import fla.layers.attn
    from transformers import AutoConfig, AutoModelForCausalLM

    if fla.layers.attn.flash_attn_func is None:
        monkeypatch.setattr(fla.layers.attn, "flash_attn_func", object())
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(export / "fla"))


@pytest.mark.parametrize("layers", [(k, k) for k in PURE] + [("gla", "attn"), ("gdn", "attn"), ("attn", "attn")],
                         ids=lambda ls: "-".join(ls))
def test_export_writes_weights_fla_loads_strictly(layers, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = save_run(tmp_path / "run", tiny(layers))
    res = export_checkpoint(tmp_path / "run", tmp_path / "ex")
    assert res.weights and res.fla and not (tmp_path / "ex" / "fla_config_unsupported.txt").exists()
    info = json.loads((tmp_path / "ex" / "checkpoint.json").read_text())
    assert info["step"] == 7 and info["layout_key"] == Layout.from_dict(tiny(layers)).key()

    fla_model = fla_model_from(tmp_path / "ex", monkeypatch)
    fla_sd = load_file(tmp_path / "ex" / "fla" / "model.safetensors")
    fla_model.load_state_dict(fla_sd, strict=True)  # every name and shape matches, nothing left at init
    hyla_sd = model.state_dict()
    assert len(fla_sd) == len(hyla_sd)
    for key, value in fla_state_dict(hyla_sd).items():
        assert torch.equal(fla_model.state_dict()[key], value), key
    assert json.loads((tmp_path / "ex" / "fla" / "config.json").read_text())["architectures"] == [
        type(fla_model).__name__]

    hyla_model = AutoModelForCausalLM.from_pretrained(tmp_path / "ex").eval()  # `import hyla` ran at collection
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(hyla_model(input_ids=ids).logits, model(input_ids=ids).logits)


def _run_check(exports: list[Path], out: Path, *extra: str) -> tuple[int, dict]:
    """The check script on the CPU (Triton interpreter) in a fresh process: exit status and its JSON."""
    proc = subprocess.run([sys.executable, str(CHECK), *map(str, exports), "--out", str(out), "--device", "cpu",
                           "--prompt-len", "12", "--new-tokens", "4", *extra],
                          capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert (out / "export_check.json").is_file(), proc.stderr[-3000:]
    return proc.returncode, json.loads((out / "export_check.json").read_text())


def test_fla_logits_equal_hyla_on_cpu(tmp_path: Path) -> None:
    """fla's own GLA/GatedDeltaNet models and a GLA+attention hybrid (Triton interpreter; SDPA for flash-attn)
    give hyla's logits from the exported weights, at fla's layer eps (1e-5) and at hyla's default norm_eps 1e-6
    (hyla's layers use the layout's eps inside, like fla's models); greedy generate agrees with and without the
    cache (both)."""
    cases = [(("gla", "gla"), 1e-5), (("gdn", "gdn"), 1e-5), (("gla", "attn"), 1e-5), (("gla", "gla"), 1e-6)]
    exports = []
    for i, (layers, eps) in enumerate(cases):
        save_run(tmp_path / f"run{i}", tiny(layers, norm_eps=eps))
        res = export_checkpoint(tmp_path / f"run{i}", tmp_path / f"ex{i}")
        assert not any("norm_eps" in n for n in res.notes), res.notes
        exports.append(res.out_dir)
    rc, result = _run_check(exports, tmp_path / "check", "--flash-attn-standin")
    assert rc == 0 and result["ok"], result
    for rec in result["exports"]:
        assert rec["ok"] and rec["fla"]["logits_rel_err_vs_hyla"] < 1e-5, rec
        assert rec["hyla"]["cache_equal"] and rec["fla"]["cache_equal"], rec
        assert not any(rec["fla"]["loading_info"].values()), rec
    assert [r["fla"]["class"] for r in result["exports"]] == ["GLAForCausalLM", "GatedDeltaNetForCausalLM",
                                                              "GLAForCausalLM", "GLAForCausalLM"]
    fla_cfg = json.loads((tmp_path / "ex3" / "fla" / "config.json").read_text())
    assert not fla_cfg.get("hyla_export_notes")


def test_check_script_records_what_it_skips(tmp_path: Path) -> None:
    """No flash-attn and no stand-in: a hybrid's fla check is skipped with the reason; head-wise has no fla/."""
    save_run(tmp_path / "hy", tiny(("gla", "attn")))
    save_run(tmp_path / "hw", tiny(("gla+a1", "gla")))
    exports = [export_checkpoint(tmp_path / "hy", tmp_path / "ex-hy").out_dir,
               export_checkpoint(tmp_path / "hw", tmp_path / "ex-hw").out_dir]
    assert (tmp_path / "ex-hw" / "fla_config_unsupported.txt").is_file()
    import fla.layers.attn

    if fla.layers.attn.flash_attn_func is not None:
        pytest.skip("flash-attn is installed here")
    rc, result = _run_check(exports, tmp_path / "check")
    assert rc == 0, result  # skipped checks do not fail
    hy, hw = result["exports"]
    assert "flash-attn is not installed" in hy["fla"]["skipped"] and hy["hyla"]["cache_equal"]
    assert "fla cannot express" in hw["fla"]["skipped"] and hw["ok"]


def test_import_hyla_is_enough_for_auto_model(tmp_path: Path) -> None:
    """A fresh interpreter: ``import hyla`` (which imports neither torch nor transformers), then
    ``AutoModelForCausalLM.from_pretrained(export_dir)``; greedy generate equal with and without the cache."""
    save_run(tmp_path / "run", tiny(("gdn", "attn")))
    export_checkpoint(tmp_path / "run", tmp_path / "ex")
    code = f"""
import sys
import hyla
assert "torch" not in sys.modules and "transformers" not in sys.modules
import torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'ex')!r}).eval()
ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
a = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=True)
b = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, use_cache=False)
assert torch.equal(a, b), (a, b)
print(type(model).__name__)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("HylaForCausalLM")


def test_cli_export_checkpoint_prints_how_to_load(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_run(tmp_path / "run", tiny(("gla", "gla")))
    assert main(["analysis", "export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "ex")]) == 0
    out = capsys.readouterr().out
    assert "load it:" in out and "import hyla" in out and f"from_pretrained('{tmp_path / 'ex'}')" in out
    assert f"'{tmp_path / 'ex'}/fla'" in out and "flash-attn for the attention" not in out  # no attention here
    assert (tmp_path / "ex" / "HOW_TO_LOAD.txt").read_text().splitlines()[0].startswith("hyla's own model")
    assert main(["analysis", "export", "--out", str(tmp_path / "ex2")]) == 2
    assert "STUDY: missing" in capsys.readouterr().err
    assert main(["analysis", "export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "e3")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_sources_and_refusals(tmp_path: Path) -> None:
    model = save_run(tmp_path / "run", tiny(("gla", "attn")), step=7)
    ckpt7 = tmp_path / "run" / "ray" / "attempt_1" / "checkpoint_000007"
    assert load_run_weights(tmp_path / "run").step == 7
    assert load_run_weights(ckpt7 / "state.pt").source == ckpt7
    # A saved HF model directory (what a finished run leaves in model/) loads as well.
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    hf = HylaForCausalLM(HylaConfig(layout=tiny(("gla", "attn"))))
    hf.load_state_dict(model.state_dict())
    hf.save_pretrained(tmp_path / "saved")
    w = load_run_weights(tmp_path / "saved")
    assert w.step is None and torch.equal(w.state_dict["model.lm_head.weight"], model.state_dict()[
        "model.lm_head.weight"])
    # Weights that do not fit the spec's layout are refused before anything is written.
    spec = (tmp_path / "run" / "spec.yaml").read_text().replace("d_model: 32", "d_model: 64")
    (tmp_path / "run" / "spec.yaml").write_text(spec)
    with pytest.raises(ConfigError, match="does not fit its layout"):
        export_checkpoint(tmp_path / "run", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ConfigError, match="is not a hyla run directory"):
        load_run_weights(tmp_path)
    with pytest.raises(ConfigError, match="no fla name"):
        fla_state_dict({"model.extra.weight": torch.zeros(1)})


def test_trial_export_with_checkpoint_and_overwrite(tmp_path: Path) -> None:
    """A study trial exported with a run's checkpoint: model files are the run's; re-exporting without it leaves no
    stale weights behind."""
    from test_export import _trial
    from study_fixtures import build_study

    from hyla.analysis.study_data import load_study

    data = load_study(build_study(tmp_path / "study"))
    trial = _trial(data, "GGGA")
    save_run(tmp_path / "run", tiny(("gla", "gla", "gla", "attn")))
    res = export_trial(data, trial, tmp_path / "ex", checkpoint=tmp_path / "run")
    assert res.weights and (tmp_path / "ex" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "ex" / "trial.json").read_text())["trial"] == trial.number
    assert any("from_pretrained" in line for line in loading_instructions(res))
    res = export_trial(data, trial, tmp_path / "ex", overwrite=True)
    assert not res.weights and not (tmp_path / "ex" / "model.safetensors").exists()
    assert not (tmp_path / "ex" / "fla" / "model.safetensors").exists()
    assert not (tmp_path / "ex" / "checkpoint.json").exists()
    assert any("from_config" in line for line in loading_instructions(res))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fla_logits_equal_hyla_on_gpu(tmp_path: Path) -> None:
    """Every fla-expressible kind and the hybrids with fla's real kernels (and flash-attn when installed)."""
    layouts = [(k, k) for k in PURE] + [("gla", "attn"), ("gdn", "attn"), ("attn", "attn")]
    exports = []
    for layers in layouts:
        save_run(tmp_path / f"run-{layers}", tiny(layers))
        exports.append(str(export_checkpoint(tmp_path / f"run-{layers}", tmp_path / f"ex-{layers}").out_dir))
    proc = subprocess.run([sys.executable, str(CHECK), *exports, "--out", str(tmp_path / "check")],
                          capture_output=True, text=True, timeout=1200, cwd=REPO, check=False)
    result = json.loads((tmp_path / "check" / "export_check.json").read_text())
    assert proc.returncode == 0, (proc.stderr[-3000:], result)
    ran = [r for r in result["exports"] if "class" in r["fla"]]
    assert len(ran) >= len(PURE), result  # the attention layouts skip only without flash-attn
