"""The recall probe (MQAR apart from the LM) and the seed spread of a ProxyResult, on CPU."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hyla.config import ConfigError
from hyla.proxy_train.probe.build import PrevTokenEmbedding, probe_layout
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.probe.levels import LevelPool, schedule
from hyla.proxy_train.probe.runner import run_probe, run_probes
from hyla.proxy_train.probe.stack import ProbeJob, ProbeStack, curve_auc
from hyla.proxy_train.proxy.config import ProxyConfig
from hyla.proxy_train.proxy.result import aggregate_seeds
from hyla.proxy_train.proxy.run import run_proxy
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.space.layout import Layout

PROBE = {"seq_len": 16, "pairs": [1, 2], "steps": 6, "batch_size": 4, "eval_every": 3, "eval_examples": 8, "warmup": 1}


def _layout(layers: tuple[str, ...] = ("gla", "attn")) -> Layout:
    return Layout(layers=layers, d_model=32, vocab_size=512, mlp_hidden=64, num_heads=2, name="probe-test")


def _proxy(**kw: object) -> ProxyConfig:
    base = {"preset": "tiny", "steps": 2, "seq_len": 32, "batch_size": 2, "text": {"source": "stdlib", "max_docs": 20},
            "eval_batches": 1, "device": "cpu", "recall": {"family": "probe", **PROBE}}
    return ProxyConfig.from_dict({**base, **kw})


@pytest.mark.parametrize(("field", "value", "match"), [
    ("pairs", [4, 2], "recall.pairs"), ("seq_len", 6, "recall.seq_len"),
    ("lrs", [], "recall.lrs"), ("task_vocab", 3, "recall.task_vocab"),
    ("kernels", "cuda", "kernels"), ("stop_at", 0.0, "recall.stop_at"), ("zero_init", "mlp", "zero_init"),
    ("heads", 0, "recall.heads"), ("betas", [0.9, 1.0], "recall.betas"), ("min_lr_ratio", 2.0, "recall.min_lr_ratio"),
    ("grad_clip", 0.0, "recall.grad_clip"), ("pair", [1, 2], "did you mean 'pairs'"),
])
def test_probe_config_refuses_bad_fields(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ProxyConfig.from_dict({"preset": "tiny", "recall": {"family": "probe", **PROBE, field: value}})


def test_proxy_config_checks_probe_combinations() -> None:
    with pytest.raises(ConfigError, match="did you mean 'probe'"):
        ProxyConfig.from_dict({"preset": "tiny", "recall": {"family": "prob", **PROBE}})
    with pytest.raises(ConfigError, match="recall.family: missing"):
        ProxyConfig.from_dict({"preset": "tiny", "recall": PROBE})
    with pytest.raises(ConfigError, match="train_lm"):
        ProxyConfig.from_dict({"preset": "tiny", "train_lm": False})  # tiny's suite rides in the LM run
    with pytest.raises(ConfigError, match="seeds"):
        ProxyConfig.from_dict({"preset": "tiny", "seeds": 0})
    with pytest.raises(ConfigError, match="exceed the layout's vocab_size"):
        run_proxy(_layout(), _proxy(recall={"family": "probe", **PROBE, "task_vocab": 1024}), progress=False)


def test_probe_config_round_trips_with_its_family() -> None:
    cfg = _proxy()
    data = cfg.to_dict()
    assert data["recall"]["family"] == "probe" and data["recall"]["betas"] == [0.9, 0.98]
    assert ProxyConfig.from_dict(data) == cfg and cfg.scores == {"lm_val_loss", "tokens_per_s", "recall", "recall_auc"}


def test_wsd_schedule_warms_holds_and_decays() -> None:
    lrs = [wsd_lr(s, 100, 1.0, 10, 0.2, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(v == 1.0 for v in lrs[10:82])  # stable until the last 20 % of the 90 post-warm-up steps
    assert 0.1 < lrs[-1] < 0.11 and all(a > b for a, b in zip(lrs[82:], lrs[83:]))  # one step short of the floor


def test_curriculum_schedule_admits_levels_in_order() -> None:
    cfg = RecallProbeConfig(**{**PROBE, "batch_size": 6, "curriculum": 0.5})
    rows = schedule(cfg, n_levels=2, rows=10, seed=0, steps=6)
    assert rows.shape == (6, 6) and (rows[:3] < 10).all()  # the first half: only level 0 (rows 0-9)
    assert sorted((rows[3] // 10).tolist()) == [0, 0, 0, 1, 1, 1]  # then both levels, evenly
    assert (schedule(cfg, 2, 10, 3, 6) == schedule(cfg, 2, 10, 3, 6)).all()  # seeded
    assert not (schedule(cfg, 2, 10, 3, 6) == schedule(cfg, 2, 10, 4, 6)).all()
    pool = LevelPool(cfg, 512, torch.device("cpu"))
    assert ((pool.y[rows[0]] != -100).sum(-1) == 1).all()  # level 0 = the 1-pair level
    assert pool.eval_x.shape == (2, 8, 16) and pool.check_x.shape == (16, 16)


def test_probe_layout_keeps_the_pattern_at_the_probe_width() -> None:
    lay = Layout(layers=("gla", "gla+a1", "attn", "gdn"), d_model=64, vocab_size=512, mlp_hidden=176, num_heads=4)
    narrow = probe_layout(lay, RecallProbeConfig(**{**PROBE, "width": 32}))
    assert narrow.d_model == 32 and narrow.num_heads == 4 and narrow.mlp_hidden == 88
    assert [(s.mixer, s.attn_heads) for s in narrow.layers] == [(s.mixer, s.attn_heads) for s in lay.layers]
    assert probe_layout(lay, RecallProbeConfig(**PROBE)) is lay
    with pytest.raises(ConfigError, match="recall.width"):
        probe_layout(lay, RecallProbeConfig(**{**PROBE, "width": 30}))
    plain = Layout(layers=("gla", "attn"), d_model=64, vocab_size=512, mlp_hidden=176, num_heads=4)
    one = probe_layout(plain, RecallProbeConfig(**{**PROBE, "width": 64, "heads": 1}))  # 1 x 64, not 4 x 16
    assert one.num_heads == 1 and one.d_model == 64 and [s.mixer for s in one.layers] == ["gla", "attn"]
    with pytest.raises(ConfigError, match="heads"):  # 1 of 4 heads cannot keep its share among 2
        probe_layout(lay, RecallProbeConfig(**{**PROBE, "width": 32, "heads": 2}))


def test_probes_side_by_side_equal_probes_alone() -> None:
    """A probe's result depends on its seed only, not on which probes share the call."""
    cfg = RecallProbeConfig(**{**PROBE, "steps": 5, "eval_every": 2, "pool_rows": 32})
    cpu = torch.device("cpu")
    jobs = [ProbeJob(_layout(), 0, 1e-3, "a"), ProbeJob(_layout(("attn", "attn")), 1, 3e-3, "b")]
    seen = []
    together = run_probes(jobs, cfg, cpu, 0.1, on_result=lambda j, r: seen.append(j.key))
    alone = run_probes(jobs[1:], cfg, cpu, 0.1)
    assert seen == ["a", "b"] and together[1]["levels"] == alone[0]["levels"]
    assert together[1]["curve"] == alone[0]["curve"] and together[0]["steps"] == 5
    assert [c[0] for c in together[0]["curve"]] == [2, 4, 5]  # checks every 2 steps, then the final score


def test_prev_token_embedding_adds_the_previous_token() -> None:
    prev = PrevTokenEmbedding(8, 4, 1.0)
    ids = torch.tensor([[3, 5, 7]])
    out = prev.hook(None, (ids,), torch.zeros(1, 3, 4))
    assert torch.equal(out[0, 1], prev.weight[3]) and torch.equal(out[0, 2], prev.weight[5])
    assert torch.equal(out[0, 0], prev.weight[0])


def test_run_probe_scores_every_level_and_every_lr() -> None:
    cfg = RecallProbeConfig(**{**PROBE, "lrs": [1e-3, 3e-3]})
    r = run_probe(_layout(), cfg, seed=0, init_std=0.1, dev=torch.device("cpu"))
    assert set(r["levels"]) == {"mqar@16x1", "mqar@16x2"}
    assert r["recall"] == pytest.approx(sum(r["levels"].values()) / 2)
    assert [p["lr"] for p in r["per_lr"]] == [1e-3, 3e-3]
    assert r["recall"] == max(p["score"] for p in r["per_lr"]) and r["lr"] in (1e-3, 3e-3)
    assert all(p["curve"][-1][0] == p["steps"] for p in r["per_lr"])
    assert all(p["auc"] == pytest.approx(curve_auc(p["curve"], cfg.steps)) for p in r["per_lr"])
    assert r["auc"] == next(p["auc"] for p in r["per_lr"] if p["lr"] == r["lr"])


def test_curve_auc_grades_how_early_recall_came() -> None:
    """Trapezoid from (0, 0) through the points, the last value held to the budget; early beats late."""
    assert curve_auc([[100, 1.0]], 100) == pytest.approx(0.5)
    assert curve_auc([[50, 1.0]], 100) == pytest.approx(0.75)  # stopped early: solved is kept to the end
    assert curve_auc([[50, 0.2], [100, 0.2]], 100) == pytest.approx((50 * 0.1 + 50 * 0.2) / 100)
    early, late = curve_auc([[25, 0.2], [50, 1.0]], 200), curve_auc([[100, 0.2], [150, 1.0]], 200)
    assert 0 < late < early < 1
    with pytest.raises(ValueError, match="total"):
        curve_auc([[1, 1.0]], 0)


def test_run_proxy_reports_seed_spread() -> None:
    r = run_proxy(_layout(), _proxy(seeds=3, seed=5), progress=False)
    assert r.status == "ok" and r.seeds == [5, 6, 7] and len(r.probe) == 3 and r.proxy_family == "probe"
    assert r.seed_values["recall_auc"] == [p["auc"] for p in r.probe]
    for metric in ("recall", "recall_auc", "lm_val_loss", "train_loss"):
        vals = r.seed_values[metric]
        assert len(vals) == 3
        assert getattr(r, metric) == pytest.approx(sum(vals) / 3)
        sd = math.sqrt(sum((v - sum(vals) / 3) ** 2 for v in vals) / 2)
        assert r.sem[metric] == pytest.approx(sd / math.sqrt(3))
    assert set(r.recall_tasks) == {"mqar@16x1", "mqar@16x2"}
    one = run_proxy(_layout(), _proxy(seed=5), progress=False)
    assert one.sem["recall"] is None and one.seed_values["recall"] == [r.seed_values["recall"][0]]  # same seed


def test_probe_only_proxy_skips_the_lm() -> None:
    r = run_proxy(_layout(), _proxy(train_lm=False), progress=False)
    assert r.status == "ok" and r.lm_val_loss is None and r.recall is not None and r.tokens_seen == 0


def test_aggregate_keeps_the_failed_seed_status() -> None:
    ok = {"status": "ok", "recall": 0.5, "lm_val_loss": 2.0, "train_loss": 2.1, "tokens_seen": 10}
    bad = {"status": "diverged", "fail_reason": "non-finite loss at step 3", "diverged_step": 3, "tokens_seen": 4}
    out = aggregate_seeds([ok, bad], [0, 1])
    assert out["status"] == "diverged" and out["fail_reason"].startswith("non-finite")
    assert out["seed_values"]["recall"] == [0.5] and out["sem"]["recall"] is None and out["tokens_seen"] == 14


def test_probe_stops_once_every_level_is_solved(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first check with every level at ``stop_at`` (and all levels admitted) ends the probe early."""
    monkeypatch.setattr(ProbeStack, "score", lambda self, x, y: torch.ones(len(self.jobs), len(self.pool.levels)))
    cfg = RecallProbeConfig(**{**PROBE, "steps": 20, "eval_every": 5, "curriculum": 0.0, "pool_rows": 16})
    r = run_probes([ProbeJob(_layout(), 0, 1e-3)], cfg, torch.device("cpu"), 0.1)[0]
    assert r["steps"] == 5 and r["curve"][0] == [5, 1.0] and r["score"] == 1.0
    assert r["auc"] == pytest.approx((2.5 + 15) / 20)  # ramp to step 5, then solved for the other 15 steps


def test_stacked_probes_equal_probes_alone() -> None:
    """Seeds and lrs of one layout train as one stacked model; each replica's result is its lone run's."""
    cfg = RecallProbeConfig(**{**PROBE, "steps": 5, "eval_every": 2, "pool_rows": 32})
    cpu = torch.device("cpu")
    jobs = [ProbeJob(_layout(), 0, 1e-3), ProbeJob(_layout(), 1, 3e-3), ProbeJob(_layout(), 0, 3e-3)]
    together = run_probes(jobs, cfg, cpu, 0.1)
    assert [r["stacked"] for r in together] == [3, 3, 3]
    for job, stacked in zip(jobs, together):
        alone = run_probes([job], cfg, cpu, 0.1)[0]
        assert alone["stacked"] == 1 and alone["steps"] == stacked["steps"]
        assert stacked["levels"] == pytest.approx(alone["levels"], abs=1e-6)
        assert [c[0] for c in stacked["curve"]] == [c[0] for c in alone["curve"]]


def test_replica_adamw_matches_torch_adamw() -> None:
    """The stacked optimizer (per-replica clipping and lr) takes torch.optim.AdamW's steps, replica by replica.
    The vectorised forward differs from a lone model's in the last bits, which Adam's normalisation amplifies
    where a gradient is near 0: eps 1e-3 keeps every update a smooth function of the gradient."""
    from hyla.proxy_train.model.lm import HylaLM
    from hyla.proxy_train.probe.replicas import ReplicaStack, replica_losses

    lay, cpu = _layout(("gla", "gla")), torch.device("cpu")
    stack = ReplicaStack(lay, [3, 4], 0.1, 0.1, cpu)
    lrs = torch.tensor([1e-2, 3e-2])
    x = torch.randint(0, lay.vocab_size, (2, 2, 8))
    y = torch.randint(0, lay.vocab_size, (2, 2, 8))
    for _ in range(3):
        stack.zero_grad()
        replica_losses(stack(x), y).sum().backward()
        stack.clip_and_step(lrs, max_norm=0.5, betas=(0.9, 0.98), eps=1e-3)
    for r, seed in enumerate([3, 4]):
        torch.manual_seed(seed)
        model = HylaLM(lay)
        model.reset_parameters(std=0.1)
        opt = torch.optim.AdamW(model.param_groups(0.1), lr=float(lrs[r]), betas=(0.9, 0.98), eps=1e-3)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x[r])[0].flatten(0, 1), y[r].flatten()).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(stack.params[name][r], p, rtol=1e-4, atol=1e-5)  # a wrong step would be ~1e-3 off


def test_compiled_blocks_train_like_the_vmapped_model() -> None:
    """``compile_blocks`` (the probe's default on CUDA) runs each layer spec's block through torch.compile, the
    embedding (with the probe's previous-token hook) and the head around them, and HGRN-2's forget-gate lower
    bounds from the LM's table: same losses and steps as the one vmapped forward. One compile per spec (gla, attn,
    bounded hgrn2), about 30 s on two CPU cores."""
    from hyla.proxy_train.probe.replicas import ReplicaStack, replica_losses

    lay, cpu = _layout(("gla", "attn", "hgrn2", "hgrn2")), torch.device("cpu")

    def prev(model: torch.nn.Module) -> None:
        PrevTokenEmbedding.attach(model, 0.1)

    x = torch.randint(0, lay.vocab_size, (2, 2, 16))
    y = torch.randint(0, lay.vocab_size, (2, 2, 16))
    runs = []
    for compiled in (False, True):
        stack = ReplicaStack(lay, [3, 4], 0.1, 0.0, cpu, [prev], compile_blocks=compiled)
        losses = []
        for _ in range(3):
            stack.zero_grad()
            loss = replica_losses(stack(x), y)
            loss.sum().backward()
            stack.clip_and_step(torch.tensor([1e-2, 3e-2]), max_norm=1.0, betas=(0.9, 0.98), eps=1e-3)
            losses.append(loss.detach())
        runs.append((torch.stack(losses), stack.params))
    (l0, p0), (l1, p1) = runs
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert l0[-1].sum() < l0[0].sum()  # it trained
    for name in p0:  # Adam turns last-bit differences of near-zero gradients into ~1e-5; a wrong step is ~1e-2
        torch.testing.assert_close(p1[name], p0[name], rtol=1e-3, atol=2e-4)


def test_a_solved_replica_stops_while_its_stack_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Early stopping is per replica: the solved one keeps its weights from the check on, the other trains on."""
    def score(self: ProbeStack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros(len(self.jobs), len(self.pool.levels))
        acc[0] = 1.0
        return acc

    monkeypatch.setattr(ProbeStack, "score", score)
    cfg = RecallProbeConfig(**{**PROBE, "steps": 20, "eval_every": 5, "curriculum": 0.0, "pool_rows": 16})
    jobs = [ProbeJob(_layout(), 0, 1e-3), ProbeJob(_layout(), 1, 1e-3)]
    solved, other = run_probes(jobs, cfg, torch.device("cpu"), 0.1)
    assert solved["steps"] == 5 and solved["score"] == 1.0 and len(solved["curve"]) == 2
    assert other["steps"] == 20 and [c[0] for c in other["curve"]] == [5, 10, 15, 20]


@pytest.mark.parametrize(("which", "zeroed"), [("none", set()), ("linear", {"blocks.0.mixer.o_proj.weight"}),
                                               ("all", {"blocks.0.mixer.o_proj.weight", "blocks.1.mixer.o_proj.weight",
                                                        "blocks.0.mlp.down_proj.weight",
                                                        "blocks.1.mlp.down_proj.weight"})])
def test_zero_init_zeroes_the_chosen_residual_outputs(which: str, zeroed: set[str]) -> None:
    from hyla.proxy_train.model.lm import HylaLM
    from hyla.proxy_train.probe.build import zero_residual_outputs

    model = HylaLM(_layout(("gla", "attn")))
    zero_residual_outputs(model, which)
    assert {n for n, p in model.named_parameters() if p.dim() == 2 and not p.any()} == zeroed
    cfg = RecallProbeConfig(**{**PROBE, "zero_init": which, "steps": 2})
    assert run_probes([ProbeJob(_layout(), 0, 1e-3)], cfg, torch.device("cpu"), 0.1)[0]["status"] == "ok"


def test_tf32_only_while_probes_run_in_fp32() -> None:
    from hyla.proxy_train.probe.runner import _tf32

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with _tf32(False):
            assert torch.get_float32_matmul_precision() == "highest"  # bf16 probes: the scans' fp32 stays fp32
        with _tf32(True):
            assert torch.get_float32_matmul_precision() == "high"
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compiled", [False, True])
def test_stacked_probe_steps_on_cuda_match_cpu(compiled: bool) -> None:
    """The probe's CUDA path (our torch mixers under vmap, optionally compiled blocks, fp32 without TF32) trains a
    stack of every linear kind like the CPU: the same gradients at the first step and the same losses over 10
    AdamW steps. The GPU probe's hybrids stayed on the MQAR plateau where CPU runs left it, so this checks the
    path itself, step by step. (First run on an H200: at lrs 1e-2/3e-3 the 1e-2 replica's losses drifted 0.75 %
    apart by step 10, fp32 reduction order amplified by training; hence lrs 3e-3/1e-3 and a first-step gradient
    check, which no training can amplify.)"""
    from hyla.proxy_train.model.mixers.common import kernel_path, scan_chunk
    from hyla.proxy_train.probe.replicas import ReplicaStack, replica_losses

    lay = _layout(("gla", "attn", "gdn", "retnet", "hgrn2", "deltanet", "hgrn"))
    x = torch.randint(0, lay.vocab_size, (2, 4, 64))
    y = torch.where(torch.rand(2, 4, 64) < 0.3, torch.randint(0, lay.vocab_size, (2, 4, 64)), -100)
    curves, first_grads = [], []
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for dev, comp in ((torch.device("cpu"), False), (torch.device("cuda"), compiled)):
            stack = ReplicaStack(lay, [0, 1], 0.1, 0.0, dev, compile_blocks=comp)
            losses = []
            with kernel_path("torch"), scan_chunk(16):
                for step in range(10):
                    stack.zero_grad()
                    loss = replica_losses(stack(x.to(dev)), y.to(dev))
                    loss.sum().backward()
                    if step == 0:
                        first_grads.append([p.grad.detach().cpu().clone() for p in stack.parameters()])
                    stack.clip_and_step(torch.tensor([3e-3, 1e-3], device=dev), max_norm=1.0, betas=(0.9, 0.98))
                    losses.append(loss.detach().cpu())
            curves.append(torch.stack(losses))
    finally:
        torch.set_float32_matmul_precision(before)
    for g_cuda, g_cpu in zip(*reversed(first_grads)):
        torch.testing.assert_close(g_cuda, g_cpu, rtol=1e-3, atol=1e-5)
    cpu, cuda = curves
    assert cpu[-1].sum() < cpu[0].sum()
    torch.testing.assert_close(cuda, cpu, rtol=2e-3, atol=2e-3)
