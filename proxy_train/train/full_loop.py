"""The Ray Train worker loop of `hyla.proxy_train.train.full_spec`: model, optimizer, sharded data, checkpoints, logging.

Runs once per worker (``TorchTrainer`` sets up the process group). Every worker holds the same model (DDP) or a
shard of it (FSDP); checkpoints hold the *full* state dict (``torch.distributed.checkpoint.state_dict`` with
``full_state_dict=True``), so a run can resume on a different number of workers or strategy. Rank 0 writes the
checkpoint, the log lines and, at the end, the evaluation and the HF model (`finish`). Each optimizer step is a
`hyla.proxy_train.train.trainer.Trainer` step (as in proxy runs); a non-finite loss averaged over the ranks at a log step
ends the run as ``diverged``, without checkpointing that state.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hyla.proxy_train.train.full_spec import CKPT_META, CKPT_STATE, STOP_FILE, RunSpec, peak_flops, recall_tasks
from hyla.proxy_train.train.evaluate import autocast_logits, lm_loss
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.train.stream import ShardStream
from hyla.proxy_train.tasks.common import level_accuracy, position_accuracy
from hyla.proxy_train.train.trainer import MicroBatch, Trainer


def lr_lambda(spec: RunSpec) -> Callable[[int], float]:
    """The LR multiplier of a full run for torch's ``LambdaLR``: `schedule.wsd_lr` with peak 1 (linear warm-up
    to 1, then with the default ``decay_fraction`` 1 a cosine over every later step down to ``min_lr_ratio``).

    A plain function, not a ``functools.partial``: ``LambdaLR.state_dict`` saves callable objects' attributes,
    so a partial would change what checkpoints hold."""
    def f(step: int) -> float:
        return wsd_lr(step, spec.total_steps, 1.0, spec.warmup_steps, spec.decay_fraction, spec.min_lr_ratio)
    return f


def build_model(spec: RunSpec) -> torch.nn.Module:
    """``HylaForCausalLM`` for the spec's layout; ``compile`` compiles SwiGLUs and norms in place (fla kernels are
    Triton already and do not trace well, so they stay eager; in-place ``Module.compile`` keeps state-dict keys)."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM
    from hyla.proxy_train.model.lm import SwiGLU

    layout = spec.resolve_layout()
    model = HylaForCausalLM(HylaConfig(layout=layout.to_dict(), gradient_checkpointing=spec.gradient_checkpointing,
                                       fuse_linear_cross_entropy=spec.fused_loss))
    if spec.compile:
        for module in model.modules():
            if isinstance(module, (SwiGLU, torch.nn.RMSNorm)):
                module.compile()
    return model


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _gather(obj: Any) -> list[Any]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def save_checkpoint(model, optimizer, scheduler, step: int, cursor: int, rank: int, extra: dict[str, Any]) -> None:
    """Collective: every rank calls it; rank 0 writes the full state and reports it to Ray Train."""
    import ray.train
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_sd, optim_sd = get_state_dict(model, optimizer, options=opts)
    rngs = _gather(_rng_state())
    metrics = {"step": step, **extra}
    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / CKPT_STATE
        torch.save({"model": model_sd, "optimizer": optim_sd, "scheduler": scheduler.state_dict(), "step": step,
                    "cursor": cursor, "rng": rngs}, state_path)
        # Written last with the state's size: a checkpoint copy cut short by a kill is recognised and skipped.
        meta = {"step": step, "cursor": cursor, "state_bytes": state_path.stat().st_size, "time": time.time()}
        (Path(tmp) / CKPT_META).write_text(json.dumps(meta))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def load_checkpoint(model, optimizer, scheduler, rank: int, resume_path: str | None) -> tuple[int, int]:
    """Restore the newest state: Ray's own checkpoint of this attempt (after a worker-group restart) or else
    ``resume_path`` (the driver's pick from earlier attempts). Returns ``(step, cursor)``, (0, 0) when fresh."""
    import ray.train
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / CKPT_STATE, map_location="cpu", weights_only=False)
    elif resume_path is not None:
        state = torch.load(Path(resume_path) / CKPT_STATE, map_location="cpu", weights_only=False)
    else:
        return 0, 0
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if rank < len(rngs):  # same world size: each rank gets its own stream back
        _set_rng_state(rngs[rank])
    return int(state["step"]), int(state["cursor"])


def _prepare(model: torch.nn.Module, spec: RunSpec) -> torch.nn.Module:
    import ray.train.torch

    if spec.strategy == "fsdp":
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        from hyla.proxy_train.model.lm import HybridBlock

        # One FSDP unit per block: only one block's full weights are materialised at a time.
        return ray.train.torch.prepare_model(model, parallel_strategy="fsdp", parallel_strategy_kwargs={
            "use_orig_params": True, "auto_wrap_policy": ModuleWrapPolicy({HybridBlock})})
    return ray.train.torch.prepare_model(model, parallel_strategy="ddp")


def _stop_requested(run_dir: Path, device: torch.device) -> bool:
    """True on every rank when any rank sees the STOP file (kept in lockstep so all ranks checkpoint together)."""
    flag = torch.tensor([1.0 if (run_dir / STOP_FILE).exists() else 0.0], device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (``config = {"spec": RunSpec dict, "run_dir": str, "resume_path": str | None}``)."""
    import ray.train
    import ray.train.torch

    from hyla.proxy_train.train.text import get_tokenizer, load_documents, pack_tokens

    spec = RunSpec.from_dict(config["spec"], where="spec")
    run_dir = Path(config["run_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(spec.seed)  # same init everywhere (DDP also broadcasts rank 0's weights)

    started = time.time()
    model = build_model(spec)
    inner = model.model
    n_params = inner.num_params()
    model = _prepare(model, spec)
    # Groups from the wrapped model's own parameters (FSDP with use_orig_params keeps them, as views).
    inner = getattr(model, "module", model).model
    optimizer = spec.make_optimizer(inner, device)
    schedule = lr_lambda(spec)
    # The trainer sets each step's lr, spec.lr x schedule(step) (LambdaLR's arithmetic); this LambdaLR steps
    # alongside so that checkpoints keep their "scheduler" state and log rows its lr.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step, cursor = load_checkpoint(model, optimizer, scheduler, rank, config.get("resume_path"))
    random.seed(spec.seed + rank)

    # Data: this rank's share of the documents, only as many tokens as it will consume.
    tok = get_tokenizer(spec.tokenizer)
    train_docs, _ = load_documents(spec.text)
    per_rank_tokens = spec.total_tokens // world + spec.seq_len + 1
    windows = pack_tokens(train_docs[rank::world], tok, spec.seq_len, max_tokens=per_rank_tokens)
    stream = ShardStream(windows.to(torch.int32), spec.micro_batch, spec.seed, rank)
    stream.cursor = cursor

    def micro_batches() -> Iterator[MicroBatch]:
        for _ in range(spec.accum_steps):
            window = stream.next_batch().to(device, non_blocking=True)
            yield MicroBatch(window[:, :-1], window[:, 1:])

    from hyla.space.cost import flops_per_token

    fpt = flops_per_token(spec.resolve_layout(), spec.seq_len)
    peak = peak_flops(torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    trainer = Trainer(model, optimizer, lambda batch: model(input_ids=batch.inputs, shift_labels=batch.targets).loss,
                      lambda s: spec.lr * schedule(s), device=device, bf16=spec.bf16 and device.type == "cuda",
                      grad_clip=spec.grad_clip, accum_steps=spec.accum_steps)
    meter, log_path = trainer.meter, run_dir / "train_log.jsonl"
    model.train()
    status, last_saved = "finished", step
    while step < spec.total_steps:
        if _stop_requested(run_dir, device):
            status = "stopped"
            break
        trainer.step(step, micro_batches())
        scheduler.step()
        step += 1
        if step % spec.log_every == 0 or step == spec.total_steps:
            if dist.is_initialized() and world > 1:
                dist.all_reduce(meter.loss_sum, op=dist.ReduceOp.SUM)
                meter.loss_sum /= world
            tps = meter.tokens_per_s(world)
            row = {"step": step, "loss": round(float(meter.loss_sum) / meter.steps, 5),
                   "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(tps, 1),
                   "mfu": round(tps * fpt / (peak * world), 5) if peak else None, "time": time.time()}
            if rank == 0:
                with log_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
            if not math.isfinite(row["loss"]):  # the mean over ranks: every rank stops here together
                status = "diverged"
                break
            if step % spec.checkpoint_every == 0:
                save_checkpoint(model, optimizer, scheduler, step, stream.cursor, rank, row)
                last_saved = step
            else:
                ray.train.report(row)
            meter.reset()
        elif step % spec.checkpoint_every == 0:
            save_checkpoint(model, optimizer, scheduler, step, stream.cursor, rank, {})
            last_saved = step
    if step != last_saved and status != "diverged":  # the final (or preempted) state is checkpointed, a NaN one not
        save_checkpoint(model, optimizer, scheduler, step, stream.cursor, rank, {"final": True})
    finish(model, spec, run_dir, status=status, step=step, n_params=n_params, rank=rank, device=device,
           started=started)


# --------------------------------------------------------------------------------------------- final evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, spec: RunSpec, device: torch.device) -> dict[str, Any]:
    """Held-out LM loss, recall at every ``eval.recall_multiples`` context (`hyla.proxy_train.train.evaluate`, as proxies
    score), and lm-eval when installed."""
    from hyla.proxy_train.train.text import HFTokenizer, get_tokenizer, load_documents, pack_tokens

    tok = get_tokenizer(spec.tokenizer)
    _, val_docs = load_documents(spec.text)
    ev = spec.eval
    logits_of = autocast_logits(lambda x: model(input_ids=x).logits, device, spec.bf16 and device.type == "cuda")
    windows = pack_tokens(val_docs, tok, spec.seq_len, max_tokens=max(ev.val_tokens, spec.seq_len + 1))
    loss, count = lm_loss(logits_of, ((w[:, :-1], w[:, 1:]) for w in windows.split(ev.batch_size)))
    out: dict[str, Any] = {"val_loss": loss, "val_tokens": count}

    recall: dict[str, float] = {}
    if ev.recall_examples:
        for task in recall_tasks(spec, model.config.vocab_size, tok, val_docs):
            x, y = task.generate(ev.recall_examples, seed=10_000 + spec.seed)  # eval seeds, not training ones
            recall[task.level] = level_accuracy(logits_of, x, y, ev.batch_size,
                                                getattr(task, "score", position_accuracy))
        out["recall_tasks"] = recall
        out["recall"] = sum(recall.values()) / len(recall) if recall else None

    if not ev.lm_eval_tasks:
        out["lm_eval"] = "skipped: no lm_eval_tasks"
    else:
        try:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
        except ImportError:
            out["lm_eval"] = "skipped: lm_eval not installed"
        else:
            if not isinstance(tok, HFTokenizer):
                out["lm_eval"] = "skipped: lm_eval needs a transformers tokenizer"
            else:
                lm = HFLM(pretrained=model, tokenizer=tok.tok, batch_size=ev.batch_size, max_length=spec.seq_len)
                res = lm_eval.simple_evaluate(model=lm, tasks=list(ev.lm_eval_tasks), limit=ev.lm_eval_limit)
                out["lm_eval"] = json.loads(json.dumps(res["results"], default=str))
    return out


def _throughput(log_path: Path, since: float) -> dict[str, Any]:
    """Mean tokens/s and MFU over this attempt's log rows, the first one (compilation, warm-up) left out."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.is_file() else []
    rows = [r for r in rows if r["time"] >= since][1:]
    if not rows:
        return {"tokens_per_s": None, "mfu": None}
    tps = sum(r["tokens_per_s"] for r in rows) / len(rows)
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]
    return {"tokens_per_s": round(tps, 1), "mfu": round(sum(mfus) / len(mfus), 5) if mfus else None}


def finish(model: torch.nn.Module, spec: RunSpec, run_dir: Path, *, status: str, step: int, n_params: int,
           rank: int, device: torch.device, started: float) -> None:
    """Collective: gather the full weights; rank 0 evaluates, saves the HF model and writes ``final.json``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    layout = spec.resolve_layout()
    final: dict[str, Any] = {"status": status, "steps": step, "total_steps": spec.total_steps,
                             "tokens_seen": step * spec.global_batch_tokens, "params": n_params,
                             "layout_key": layout.key(), "layout_name": layout.name, "device": str(device),
                             "num_workers": spec.num_workers, "strategy": spec.strategy,
                             **_throughput(run_dir / "train_log.jsonl", started)}
    if status == "finished":
        from hyla.proxy_train.train.text import HFTokenizer, get_tokenizer

        eval_model = build_model(replace(spec, compile=False, gradient_checkpointing=False))
        eval_model.load_state_dict(full)
        eval_model.to(device).eval()
        final["eval"] = evaluate(eval_model, spec, device)
        eval_model.save_pretrained(run_dir / "model")
        tok = get_tokenizer(spec.tokenizer)
        if isinstance(tok, HFTokenizer):
            tok.tok.save_pretrained(run_dir / "model")
        final["model_dir"] = str(run_dir / "model")
    tmp = run_dir / "final.json.tmp"
    tmp.write_text(json.dumps(final, indent=2))
    tmp.replace(run_dir / "final.json")
