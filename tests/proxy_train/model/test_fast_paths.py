"""The kernel options of `HylaLM` / `HylaForCausalLM` (fused norm, SwiGLU and loss; regional torch.compile;
selective recomputation): same arithmetic, same parameter names, as the plain model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_layout
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.model.recompute import CHECKPOINTING

HERE = Path(__file__).resolve().parent
FUSED = {"fuse_norm": {"rms_norm": 5}, "fuse_swiglu": {"swiglu_linear": 2}, "fused_loss": {},
         "all": {"rms_norm": 5, "swiglu_linear": 2}}


def test_fused_kernels_match_torch_under_the_triton_interpreter() -> None:
    """fla's real kernels (RMSNorm with the residual add, SwiGLU + down projection, linear cross-entropy) run on
    the CPU under ``TRITON_INTERPRET=1`` through `HylaForCausalLM`'s own paths: each option calls its kernels
    (two blocks: four block norms and the final norm; two MLPs) and gives the plain model's loss and gradients."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, str(HERE / "fused_interpreted.py")], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    plain = report.pop("plain")
    assert plain["fla_calls"] == {} and not plain["logits_none"]
    for name, want_calls in FUSED.items():
        got = report[name]
        assert got["fla_calls"] == want_calls, (name, got)
        assert got["logits_none"] == (name in ("fused_loss", "all"))  # fused loss: no logits tensor
        assert abs(got["loss"] - plain["loss"]) < 1e-5, (name, got["loss"], plain["loss"])
        assert got["max_grad_diff"] < 1e-4 * plain["max_grad"], (name, got)


def test_fused_options_keep_parameters_and_fall_back_on_cpu() -> None:
    """Off CUDA (no interpreter) the fused options run torch's arithmetic: the same logits, state-dict keys and
    values as the plain model, so checkpoints load either way."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    layout = tiny_layout("gla", "attn", "gla+a1")
    ids = torch.randint(0, 512, (2, 12))
    models = []
    for kw in ({}, {"fuse_norm": True, "fuse_swiglu": True}):
        torch.manual_seed(0)
        models.append(HylaForCausalLM(HylaConfig(layout=layout, **kw)).eval())
    plain, fused = models
    assert plain.state_dict().keys() == fused.state_dict().keys()
    fused.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, plain(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("mode", CHECKPOINTING[1:])
def test_every_recompute_mode_gives_the_same_gradients(mode: bool | str) -> None:
    """``gradient_checkpointing`` True/"block" (whole blocks), "mixer", "mlp" (one half of every block)."""
    layout = tiny_layout("gla", "gla+a1", "attn", "hgrn2")  # a head-wise layer and a bounded (HGRN-2) layer
    ids = torch.randint(0, 512, (2, 12))
    grads = []
    for ckpt in (False, mode):
        torch.manual_seed(0)
        model = HylaLM(layout, gradient_checkpointing=ckpt).train()
        model(ids)[0].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


def test_bad_recompute_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="gradient_checkpointing: 'attn'"):
        HylaLM(tiny_layout(), gradient_checkpointing="attn")


def test_compiled_regions_equal_eager_and_share_graphs() -> None:
    """`HylaForCausalLM.compile_regions` on CPU: loss and gradients of eager, also under "mlp" recomputation (the
    compiled half recomputed); three graphs serve every layer (the MLP half, attention's mixer half, the head and
    loss), not one per layer; cached decoding keeps the eager mixers (states, python positions)."""
    from torch._dynamo.utils import counters

    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    layout = tiny_layout("gla", "attn", "gla", "gla", "attn", "gla")
    ids = torch.randint(0, 512, (2, 17))
    torch._dynamo.reset()
    counters.clear()
    for ckpt in (False, "mlp"):
        results = []
        for compiled in (False, True):
            torch.manual_seed(0)
            model = HylaForCausalLM(HylaConfig(layout=layout, gradient_checkpointing=ckpt)).train()
            if compiled:
                model.compile_regions()
            loss = model(ids[:, :-1], shift_labels=ids[:, 1:]).loss
            loss.backward()
            results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        (eager_loss, eager_grads), (comp_loss, comp_grads) = results
        torch.testing.assert_close(comp_loss, eager_loss)
        for name, g in eager_grads.items():
            torch.testing.assert_close(comp_grads[name], g, msg=name)
    assert counters["stats"]["unique_graphs"] == 3, dict(counters["stats"])
    model.eval()
    with torch.no_grad():
        out = model(ids[:, :8], use_cache=True)
        assert model(ids[:, 8:9], past_key_values=out.past_key_values, use_cache=True).logits.shape == (2, 1, 512)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("option", ["fuse_norm", "fuse_swiglu", "fuse_linear_cross_entropy", "compile", "all"])
def test_fast_paths_match_the_plain_model_on_cuda(option: str) -> None:
    """Each option on CUDA under bf16 autocast (hyla train's step): loss and gradients of the plain model."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    layout = tiny_layout("gla", "gla+a1", "attn", "attn@5", vocab_size=256)
    ids = torch.randint(0, 256, (4, 129), device="cuda")
    flags = ("fuse_norm", "fuse_swiglu", "fuse_linear_cross_entropy")
    kw = {f: True for f in flags} if option == "all" else {option: True} if option in flags else {}
    runs = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = HylaForCausalLM(HylaConfig(layout=layout, **(kw if fast else {}))).cuda()
        if fast and option in ("compile", "all"):
            model.compile_regions()
        with torch.autocast("cuda", torch.bfloat16):
            out = model(ids[:, :-1], shift_labels=ids[:, 1:])
        out.loss.backward()
        runs.append((out.loss.detach().float(), [p.grad.float() for p in model.parameters()]))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-2, atol=1e-2)
    for a, b in zip(runs[1][1], runs[0][1]):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.99 or b.norm() < 1e-6, float(cos)
