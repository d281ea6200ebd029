"""The one training step (`hyla.proxy_train.train.trainer`): accumulation, the lr of each step, the finite check, the
loss mix, the meter, FSDP's clip (two gloo ranks on the CPU); and a full run's loop on it (in-process, Ray Train's
worker API faked) stopping on NaN."""

from __future__ import annotations

import copy
import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_layout
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.model.loss import IGNORE, token_loss
from hyla.proxy_train.train.trainer import MicroBatch, Trainer, mixed_loss

CPU = torch.device("cpu")


def _model(seed: int = 0) -> HylaLM:
    torch.manual_seed(seed)
    return HylaLM(tiny_layout("attn", "attn", vocab_size=64))


def _rows(n: int, seed: int, t: int = 16) -> MicroBatch:
    rows = torch.randint(0, 64, (n, t + 1), generator=torch.Generator().manual_seed(seed))
    return MicroBatch(rows[:, :-1], rows[:, 1:])


def _lm_loss(model: torch.nn.Module):
    return lambda batch: token_loss(model(batch.inputs)[0], batch.targets)


@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_make_the_step_of_one_big_batch(k: int) -> None:
    big = _model()
    small = copy.deepcopy(big)
    # no clipping here: it would hide a gradient k times too large
    trainers = [Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), _lm_loss(m), lambda s: 0.5, device=CPU,
                        accum_steps=a) for m, a in ((big, 1), (small, k))]
    for step in range(2):
        batch = _rows(8, seed=step)
        parts = [MicroBatch(x, y) for x, y in zip(batch.inputs.chunk(k), batch.targets.chunk(k), strict=True)]
        loss_big = trainers[0].step(step, [batch])
        loss_small = trainers[1].step(step, iter(parts))  # drawn lazily, as a full run's generator
        torch.testing.assert_close(loss_small, loss_big, rtol=1e-6, atol=1e-6)
    start, moved = _model(), False
    for (name, a), b in zip(big.named_parameters(), small.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
        assert b.grad is None  # gradients dropped after the step
        moved |= not torch.equal(a, start.get_parameter(name))
    assert moved and trainers[1].meter.steps == 2 and trainers[1].meter.tokens == trainers[0].meter.tokens == 2 * 8 * 16
    with pytest.raises(ValueError, match="expected accum_steps"):
        trainers[1].step(2, [batch])


def test_no_sync_on_every_micro_batch_but_the_last() -> None:
    class Wrapped(torch.nn.Module):  # stands in for DDP: forwards decide whether the backward all-reduces
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.deferred, self.log = _model(), False, []

        @contextmanager
        def no_sync(self):
            self.deferred = True
            yield
            self.deferred = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.log.append(self.deferred)
            return self.inner(x)[0]

    model = Wrapped()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      lambda b: token_loss(model(b.inputs), b.targets), lambda s: 0.1, device=CPU, accum_steps=3)
    trainer.step(0, [_rows(2, seed=i) for i in range(3)])
    assert model.log == [True, True, False]


def test_the_lr_of_each_step_is_the_schedule() -> None:
    from hyla.proxy_train.train.full_loop import lr_lambda
    from hyla.proxy_train.proxy.config import ProxyConfig, lr_at

    total, model = 12, _model()
    cfg = ProxyConfig.from_dict({"steps": total, "warmup": 3, "lr": 2e-3, "decay_fraction": 0.5, "device": "cpu"})
    # Proxies: lr_at(step, cfg), as run_proxy passes it.
    opt = cfg.make_optimizer(model, CPU)
    seen: list[list[float]] = []
    opt.register_step_pre_hook(lambda o, *_: seen.append([g["lr"] for g in o.param_groups]))
    trainer = Trainer(model, opt, _lm_loss(model), lambda s: lr_at(s, cfg), device=CPU, grad_clip=1.0)
    for step in range(total):
        trainer.step(step, [_rows(2, seed=step)])
    want = [wsd_lr(s, total, 2e-3, 3, 0.5, cfg.min_lr_ratio) for s in range(total)]
    assert seen == [[lr] * len(opt.param_groups) for lr in want] and len(set(want)) > 3
    # Full runs: spec.lr x lr_lambda(spec), the lr their LambdaLR (kept for checkpoints) holds at the same step.
    spec = type("Spec", (), {"total_steps": total, "warmup_steps": 3, "decay_fraction": 1.0, "min_lr_ratio": 0.1})
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec))
    trainer = Trainer(model, opt, _lm_loss(model), lambda s: 3e-4 * lr_lambda(spec)(s), device=CPU)
    for step in range(total):
        assert trainer.lr_at(step) == scheduler.get_last_lr()[0]  # bit for bit
        trainer.step(step, [_rows(2, seed=step)])
        scheduler.step()


def test_a_non_finite_loss_makes_no_update() -> None:
    model = _model()
    calls = {"n": 0}

    def loss_fn(batch: MicroBatch) -> torch.Tensor:
        calls["n"] += 1
        loss = token_loss(model(batch.inputs)[0], batch.targets)
        return loss * float("inf") if calls["n"] == 2 else loss

    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=1e-2), loss_fn, lambda s: 1e-2, device=CPU,
                      grad_clip=1.0)
    assert trainer.step(0, [_rows(2, seed=0)], check_finite=True) is not None
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert trainer.step(1, [_rows(2, seed=1)], check_finite=True) is None
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert trainer.meter.steps == 1 and trainer.meter.tokens == 2 * 16
    assert math.isfinite(float(trainer.step(2, [_rows(2, seed=2)], check_finite=True)))


def test_mixed_loss_weighs_each_part_by_its_rows_and_ignores_unscored_targets() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 7, generator=g)
    targets = torch.randint(0, 7, (4, 5), generator=g)
    targets[0, :2] = IGNORE
    targets[3, :4] = IGNORE  # the second part scores one token, as a recall row scores its answers
    keep = targets != IGNORE
    torch.testing.assert_close(mixed_loss(logits, targets), F.cross_entropy(logits[keep], targets[keep]))
    torch.testing.assert_close(token_loss(logits, targets), F.cross_entropy(logits[keep], targets[keep]))
    first = F.cross_entropy(logits[:3][keep[:3]], targets[:3][keep[:3]])
    second = F.cross_entropy(logits[3:][keep[3:]], targets[3:][keep[3:]])
    torch.testing.assert_close(mixed_loss(logits, targets, split=3), 0.75 * first + 0.25 * second)


def test_meter_counts_a_window_and_resets() -> None:
    model = _model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), _lm_loss(model), lambda s: 0.1, device=CPU)
    losses = [float(trainer.step(s, [_rows(3, seed=s)])) for s in range(3)]
    meter = trainer.meter
    assert meter.steps == 3 and meter.tokens == 3 * 3 * 16
    assert float(meter.loss_sum) == pytest.approx(sum(losses))
    assert meter.tokens_per_s(world=2) > meter.tokens_per_s() > 0
    meter.reset()
    assert meter.steps == meter.tokens == 0 and float(meter.loss_sum) == 0.0


def _fsdp_rank(rank: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        reference = _model()
        model = FullyShardedDataParallel(copy.deepcopy(reference), device_id=CPU, use_orig_params=True)
        batch = _rows(4, seed=0)  # the same rows on both ranks: the averaged gradient is the reference's
        for m in (reference, model):
            Trainer(m, torch.optim.SGD(m.parameters(), lr=1.0), _lm_loss(m), lambda s: 1.0, device=CPU,
                    grad_clip=0.01).step(0, [batch])
        with FullyShardedDataParallel.summon_full_params(model):
            diff = max(float((a - b).abs().max()) for a, b in zip(model.parameters(), reference.parameters(),
                                                                   strict=True))
        queue.put((rank, diff))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_clips_the_norm_of_every_rank_s_shards() -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_fsdp_rank, args=(rank, port, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    diffs = dict(queue.get(timeout=5) for _ in procs)
    assert max(diffs.values()) < 1e-6, diffs  # clipped by each rank's own shards: 3e-4 off


# ------------------------------------------------------------------------------------ a full run's loop, no Ray


def _fake_ray_train(monkeypatch: pytest.MonkeyPatch, store: Path) -> None:
    """One rank on the CPU: Ray Train's worker API replaced; reported checkpoints are copied to ``store/step_N``."""
    import ray.train
    import ray.train.torch

    class Checkpoint:
        def __init__(self, path: str) -> None:
            self.path = path

        from_directory = classmethod(lambda cls, path: cls(path))

    def report(metrics: dict, checkpoint: Checkpoint | None = None) -> None:
        if checkpoint is not None:
            shutil.copytree(checkpoint.path, store / f"step_{metrics['step']}")

    context = type("Context", (), {"get_world_rank": lambda self: 0, "get_world_size": lambda self: 1})()
    monkeypatch.setattr(ray.train, "get_context", lambda: context)
    monkeypatch.setattr(ray.train, "report", report)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "Checkpoint", Checkpoint)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: CPU)
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda model, **kw: model)


def test_full_run_stops_on_a_non_finite_loss_without_checkpointing_it(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from hyla.proxy_train.model import hf
    from hyla.proxy_train.train.full_spec import RunSpec
    from hyla.proxy_train.train.full_loop import train_loop_per_worker

    _fake_ray_train(monkeypatch, tmp_path / "ckpts")
    real, calls = hf.HylaForCausalLM.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 8:  # 2 micro-batches per step: NaN from step 5 on
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(hf.HylaForCausalLM, "forward", poisoned)
    spec = RunSpec.from_dict({
        "layout": tiny_layout("attn", "attn", vocab_size=260).to_dict(), "scale": "custom", "tokens": 10 * 256,
        "seq_len": 32, "global_batch_tokens": 256, "micro_batch": 4, "warmup_steps": 2, "log_every": 3,
        "checkpoint_every": 3, "text": {"source": "stdlib", "max_docs": 20}, "num_workers": 1, "use_gpu": False,
        "bf16": False, "tokenizer": "byte", "out_dir": str(tmp_path / "run")})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train_loop_per_worker({"spec": spec.to_dict(), "run_dir": str(run_dir), "resume_path": None})
    rows = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    # the process's first step is logged too (its start-up), then every log_every steps
    assert [r["step"] for r in rows] == [1, 3, 6] and "startup" in rows[0]
    assert math.isfinite(rows[1]["loss"]) and math.isnan(rows[2]["loss"])
    final = json.loads((run_dir / "final.json").read_text())
    assert final["status"] == "diverged" and final["steps"] == 6 and "eval" not in final
    assert sorted(p.name for p in (tmp_path / "ckpts").iterdir()) == ["step_3"]  # the NaN state is not saved
    state = torch.load(tmp_path / "ckpts" / "step_3" / "state.pt", weights_only=False)
    assert state["step"] == 3 and state["scheduler"]["last_epoch"] == 3  # LambdaLR's state, as before
