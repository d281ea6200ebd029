"""HylaLM and the HF wrapper: exact parameter count, causality, cached decoding, save/load, generate, training."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_layout
from hyla.proxy_train.model.lm import HylaLM, greedy_decode
from hyla.space.cost import param_count


def _mixed_layout():
    kind = "gla"
    return tiny_layout(kind, f"{kind}+a1", "attn", f"{kind}+a1@4", "attn@5", name="mixed")


@pytest.mark.parametrize("layers", [("attn",), ("attn", "attn@8"), ("attn", "attn")])
def test_param_count_attention(layers: tuple[str, ...]) -> None:
    for kv in (None, 1):
        layout = tiny_layout(*layers, num_kv_heads=kv)
        model = HylaLM(layout)
        counts = param_count(layout)
        assert model.num_params() == counts.total
        assert model.num_params(non_embedding=True) == counts.non_embedding


def test_param_count_every_linear_kind(linear_kind: str) -> None:
    layout = tiny_layout(linear_kind, "attn", f"{linear_kind}+a1", d_model=64, num_heads=4)
    model = HylaLM(layout)
    assert model.num_params() == param_count(layout).total
    per_layer = [sum(p.numel() for p in b.parameters()) for b in model.blocks]
    assert per_layer == list(param_count(layout).per_layer)


def _logits(model: HylaLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[0]


def test_causal_full_model(linear_kind: str) -> None:
    torch.manual_seed(0)
    layout = tiny_layout(linear_kind, "attn", f"{linear_kind}+a1")
    model = HylaLM(layout).eval()
    ids = torch.randint(0, 256, (2, 24))
    base = _logits(model, ids)
    changed = ids.clone()
    changed[:, 12] = (changed[:, 12] + 7) % 256
    out = _logits(model, changed)
    torch.testing.assert_close(out[:, :12], base[:, :12], rtol=1e-5, atol=1e-5)
    assert (out[:, 12:] - base[:, 12:]).abs().max() > 1e-4  # the change is seen from position 12 on


def test_attention_model_causal(attn_layout) -> None:
    model = HylaLM(attn_layout).eval()
    ids = torch.randint(0, 256, (1, 16))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 256
    torch.testing.assert_close(_logits(model, changed)[:, :-1], _logits(model, ids)[:, :-1])


def test_cached_decode_equals_full_forward() -> None:
    torch.manual_seed(0)
    model = HylaLM(_mixed_layout()).eval()
    ids = torch.randint(0, 256, (2, 13))
    full = _logits(model, ids)
    with torch.no_grad():
        pieces, states = [], None
        for a, b in ((0, 7), (7, 8), (8, 9), (9, 13)):  # prefill, single steps, then a chunk
            logits, states = model(ids[:, a:b], states=states, use_cache=True)
            pieces.append(logits)
    assert len(states) == model.layout.n_layers
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-4)


def test_bad_states_length(attn_layout) -> None:
    model = HylaLM(attn_layout)
    with pytest.raises(ValueError, match="states has 1 entries"):
        model(torch.zeros(1, 4, dtype=torch.long), states=[None], use_cache=True)


def test_hf_round_trip_and_generate(tmp_path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    torch.manual_seed(0)
    layout = _mixed_layout()
    model = HylaForCausalLM(HylaConfig(layout=layout)).eval()
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).to_layout() == layout
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, HylaForCausalLM)
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
        out = loaded.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
        # reference: greedy by recomputing the whole prefix each step (no cache involved)
        ref = ids
        for _ in range(6):
            ref = torch.cat([ref, loaded.model(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)
    assert torch.equal(greedy_decode(loaded.model, ids, 6), ref)
    loss = loaded(ids, labels=ids).loss
    assert torch.isfinite(loss) and loss > 0


def test_hf_losses_from_labels_and_shift_labels() -> None:
    """``labels`` (shifted inside, HF convention) and ``shift_labels`` (a training loop's aligned targets) give the
    plain next-token cross entropy; off CUDA the fused-loss flag falls back to it and keeps the logits."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    torch.manual_seed(0)
    layout = _mixed_layout()
    model = HylaForCausalLM(HylaConfig(layout=layout, fuse_linear_cross_entropy=True))
    ids = torch.randint(0, 256, (2, 10))
    logits, _ = model.model(ids[:, :-1])
    want = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    by_shift = model(ids[:, :-1], shift_labels=ids[:, 1:])
    torch.testing.assert_close(by_shift.loss, want)
    torch.testing.assert_close(by_shift.logits, logits)
    torch.testing.assert_close(model(ids, labels=ids).loss, want)  # position 9 has no target


def test_cache_reorder_selects_rows_of_every_state() -> None:
    """``HylaCache.reorder_cache`` (beam search) on linear, attention and head-wise states: the cache of a
    reordered batch equals the cache built from the reordered prompts."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    torch.manual_seed(0)
    model = HylaForCausalLM(HylaConfig(layout=_mixed_layout())).eval()
    ids = torch.randint(0, 256, (3, 7))
    order = torch.tensor([2, 0, 1])
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        cache.reorder_cache(order)
        want = model(ids[order], use_cache=True).cache
    n_tensors = 0
    for got_state, want_state in zip(cache.states, want.states):
        assert got_state.keys() == want_state.keys()
        for key, value in want_state.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(got_state[key], value)
                n_tensors += 1
    assert n_tensors >= 8  # every layer kind of the mixed layout kept a state


def _one_step(layout) -> None:
    torch.manual_seed(0)
    model = HylaLM(layout)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-2)
    ids = torch.randint(0, 256, (2, 17))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    logits, _ = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    opt.step()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_training_step_attention(attn_layout) -> None:
    _one_step(attn_layout)


def test_training_step_every_linear_kind(linear_kind: str) -> None:
    _one_step(tiny_layout(linear_kind, f"{linear_kind}+a1", "attn"))


def _lm_loss(model: HylaLM, ids: torch.Tensor) -> torch.Tensor:
    logits, _ = model(ids[:, :-1])
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())


#: kinds whose bf16 gradients legitimately differ from fp32 at this tiny shape. fla 0.6's HGRN-2 computes its key
#: ``1 - exp(logsigmoid(f))`` in the input dtype: in bf16 the first layer's gradients came out 1.1 (relative) away
#: from the CPU fp32 ones on an H100 while the loss matched to 1%, and the same step in fp32 on CUDA matched to
#: 1.8e-3. For these kinds the fp32 CUDA step is checked instead (fla's kernels vs our path, without bf16).
BF16_GRADIENT_SENSITIVE = {"hgrn2"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (fla Triton kernels)")
def test_training_step_on_cuda_matches_cpu(linear_kind: str) -> None:
    """One bf16 step on CUDA (fla kernels, SDPA, head-wise layer) from the same weights as an fp32 step on CPU
    (our torch paths): same loss, same gradients up to bf16 error, every parameter updated."""
    layout = tiny_layout(linear_kind, f"{linear_kind}+a1", "attn", linear_kind, d_model=64, num_heads=2)
    torch.manual_seed(0)
    cpu = HylaLM(layout).train()
    gpu = HylaLM(layout).cuda().train()
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, 256, (2, 129))  # T = 128 > 64: fla's chunk kernels, not the fused recurrent ones
    loss_cpu = _lm_loss(cpu, ids)
    loss_cpu.backward()
    opt = torch.optim.AdamW(gpu.param_groups(0.1), lr=1e-2)
    before = {n: p.detach().clone() for n, p in gpu.named_parameters()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_gpu = _lm_loss(gpu, ids.cuda())
    loss_gpu.backward()
    assert abs(loss_gpu.item() - loss_cpu.item()) < 1e-2 * loss_cpu.item()
    names = [n for n, _ in cpu.named_parameters()]
    g_cpu = dict(cpu.named_parameters())
    g_gpu = dict(gpu.named_parameters())
    missing = [n for n in names if g_gpu[n].grad is None or not torch.isfinite(g_gpu[n].grad).all()]
    assert not missing, f"parameters without a finite gradient on CUDA: {missing}"
    flat_cpu = torch.cat([g_cpu[n].grad.flatten() for n in names])
    flat_gpu = torch.cat([g_gpu[n].grad.float().flatten().cpu() for n in names])
    per_param = sorted(((g_gpu[n].grad.float().cpu() - g_cpu[n].grad).norm().item()
                        / max(g_cpu[n].grad.norm().item(), 1e-12), n) for n in names)[::-1]
    worst = ", ".join(f"{n} {e:.2g} (|g| {g_cpu[n].grad.norm().item():.2g})" for e, n in per_param[:5])
    err = ((flat_gpu - flat_cpu).norm() / flat_cpu.norm()).item()
    if linear_kind in BF16_GRADIENT_SENSITIVE or err >= 5e-2:  # the same step in fp32 on CUDA: bf16 or the path?
        fp32 = HylaLM(layout).cuda().train()
        fp32.load_state_dict(cpu.state_dict())
        _lm_loss(fp32, ids.cuda()).backward()
        flat32 = torch.cat([p.grad.flatten().cpu() for p in fp32.parameters()])
        err32 = ((flat32 - flat_cpu).norm() / flat_cpu.norm()).item()
        worst += f"; fp32 on CUDA: {err32:.3g}"
        assert err32 < 1e-2, f"fp32 gradient error on CUDA {err32:.3g}; worst bf16 gradients: {worst}"
    if linear_kind not in BF16_GRADIENT_SENSITIVE:
        assert err < 5e-2, f"gradient error {err:.3g}; worst gradients: {worst}"
    opt.step()
    unchanged = [n for n, p in gpu.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged, f"parameters the step did not change: {unchanged}"


def test_init_scales_residual_projections(attn_layout) -> None:
    model = HylaLM(attn_layout)
    std_q = model.blocks[0].mixer.q_proj.weight.std().item()
    std_o = model.blocks[0].mixer.o_proj.weight.std().item()
    assert 0.015 < std_q < 0.025
    assert std_o < std_q * 0.75  # scaled by 1/sqrt(2 * n_layers) = 0.5


def test_lower_bounds_follow_fla_and_train() -> None:
    """HGRN/HGRN-2 layers take fla's model-level forget-gate lower bounds: one zero-initialised table
    (n_layers, width), rows softmax-cumsum'd to i/L at init, layer 0 and attention unbounded, counted by the cost
    model, out of weight decay, trained; ``lower_bound: false`` removes them and changes the logits."""
    layout = tiny_layout("attn", "hgrn2", "hgrn2", "attn")
    torch.manual_seed(0)
    model = HylaLM(layout)
    assert layout.bounded_layers() == (1, 2) and [b.bounded for b in model.blocks] == [False, True, True, False]
    assert tuple(model.lower_bounds.shape) == layout.lower_bound_shape() == (4, layout.d_model)
    assert model.num_params() == param_count(layout).total and param_count(layout).lower_bounds == 4 * layout.d_model
    torch.testing.assert_close(model.bound_rows()[:, 0], torch.tensor([0.0, 0.25, 0.5, 0.75]))
    assert any(p is model.lower_bounds for p in model.param_groups(0.1)[1]["params"])
    ids = torch.randint(0, 256, (2, 12))
    model(ids)[0].square().mean().backward()
    assert model.lower_bounds.grad[1:3].abs().sum() > 0  # the bounded layers' rows feed the loss
    off = layout.with_layers(["attn", {"mixer": "hgrn2", "options": {"lower_bound": False}},
                              {"mixer": "hgrn2", "options": {"lower_bound": False}}, "attn"])
    torch.manual_seed(0)
    plain = HylaLM(off)
    assert plain.lower_bounds is None and plain.num_params() == param_count(off).total == model.num_params() - 128
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "lower_bounds"})
    assert (_logits(plain, ids) - _logits(model, ids)).abs().max() > 1e-4


def test_lower_bound_widths_must_agree() -> None:
    from hyla.config import ConfigError

    with pytest.raises(ConfigError, match="lower bounds of layers"):
        tiny_layout("hgrn", {"mixer": "hgrn", "options": {"expand_ratio": 2}})
    tiny_layout("hgrn", {"mixer": "hgrn", "options": {"expand_ratio": 2, "lower_bound": False}})  # one table: fine
