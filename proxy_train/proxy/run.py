"""`run_proxy`: train one layout briefly, score LM loss and recall, record its exact memory cost.

`run_proxy(layout, config)` is what a search worker calls per trial. It validates everything first (a
`ConfigError` for bad input is the only exception it raises), then, for every seed, trains with AdamW (linear
warm-up, a stable phase, then a cosine decay over the last ``decay_fraction`` of the steps), gradient clipping and
bf16 autocast on CUDA (fp32 on CPU), one `hyla.proxy_train.train.trainer.Trainer` step at a time (as full runs),
and returns a `ProxyResult`. Divergence (a non-finite loss), CUDA out-of-memory and any other failure become a
result status (``diverged``, ``oom``, ``failed``) instead of an exception, so one bad trial never kills a worker.

Recall (`hyla.proxy_train.proxy.recall`). With ``family: suite`` every batch holds ``batch_size`` rows of
``seq_len`` tokens of which ``round(batch_size * mix)`` come from the suite's training generator
(``RecallSuite.train_batch``), the rest are windows of the packed LM text; the loss is ``(1 - w) * lm_loss + w *
recall_loss`` with ``w`` the recall row share, each term a mean over its own scored tokens (`trainer.mixed_loss`:
recall rows score only a few answer tokens, and a plain token mean would drown them). With ``phase_steps > 0``
recall rows appear only in the last ``phase_steps`` steps. Other families (``probe``) score recall after the LM
runs of every seed, through their ``run``.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hyla.config import ConfigError, dump_yaml
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.model.loss import token_loss
from hyla.proxy_train.model.mixers.registry import quiet_fla
from hyla.proxy_train.proxy.config import ProxyConfig, lr_at
from hyla.proxy_train.proxy.data import ProxyData, prepare_data
from hyla.proxy_train.proxy.recall import family_name, family_of
from hyla.proxy_train.proxy.result import ProxyResult, aggregate_seeds
from hyla.proxy_train.train.evaluate import autocast_logits, lm_loss
from hyla.proxy_train.train.trainer import MicroBatch, Trainer, mixed_loss
from hyla.space.cost import inference_memory, param_count
from hyla.space.layout import Layout


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    try:
        with quiet_fla():
            import fla
        out["fla"] = getattr(fla, "__version__", "unknown")
    except Exception:  # fla missing must not fail a CPU-only attention run
        out["fla"] = "missing"
    return out


def _write_json(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def resolve_device(requested: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; asking for CUDA without one is a ConfigError."""
    if requested not in ("auto", "cpu", "cuda") and not requested.startswith("cuda:"):
        raise ConfigError(f"proxy device: {requested!r} is not allowed; expected auto, cpu, cuda or cuda:N")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"proxy device: {requested!r} requested but CUDA is not available; use cpu or auto")
    return torch.device(requested)


def _peak_mem(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def run_proxy(layout: Layout, config: ProxyConfig, out_dir: str | Path | None = None, progress: bool = True,
              device: str | None = None, overwrite: bool = False,
              on_step: Callable[[int], None] | None = None) -> ProxyResult:
    """Train ``layout`` under ``config`` and score it.

    Args:
        layout: the model to train (its vocab_size is used as given).
        config: the proxy recipe.
        out_dir: where to write result.json, config.yaml and layout.yaml (None = nothing written).
        progress: show a progress bar.
        device: overrides ``config.device`` (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
        overwrite: allow replacing an existing finished result in ``out_dir``.
        on_step: called with the step index as each LM training step begins (its batch drawn; the previous
            step's loss already read back, which synchronises the device), for every seed; for timing.

    Returns:
        The `ProxyResult`; divergence, OOM and runtime failures are statuses, not exceptions.

    Raises:
        ConfigError: bad input (vocab too small, device unavailable, unreadable corpus, finished out_dir ...).
    """
    t0 = time.perf_counter()
    dev = resolve_device(device or config.device)
    out = _check_out(out_dir, overwrite)
    data = prepare_data(layout, config)  # validates tokenizer/vocab/corpus/suite: ConfigError before work
    family = family_of(config.recall) if config.recall is not None else None
    if family is not None and family.check is not None:
        family.check(config.recall, layout)  # e.g. the probe's symbols must fit the layout's vocab
    _write_inputs(out, layout, config)
    base = _base_fields(layout, config, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seeds = [config.seed + i for i in range(config.seeds)]
    per_seed = []
    for i, seed in enumerate(seeds):
        cfg = dataclasses.replace(config, seed=seed)
        fields_ = _train_seed(layout, cfg, dev, data if i == 0 else prepare_data(layout, cfg), progress, on_step)
        per_seed.append(fields_)
        if fields_["status"] != "ok":
            break  # a failed seed fails the trial; the seeds before it are kept in seed_values
    if family is not None and family.run is not None and all(f["status"] == "ok" for f in per_seed):
        _score_recall(family.run, layout, config, seeds, per_seed, dev, progress)
    peak = _peak_mem(dev)
    result = ProxyResult(**base, **aggregate_seeds(per_seed, seeds), peak_mem_bytes=peak,
                         wall_s=time.perf_counter() - t0)
    if out is not None:
        _write_json(result.to_dict(), out / "result.json")
    return result


def run_proxies(layouts: list[Layout], config: ProxyConfig, out_dirs: list[str | Path | None] | None = None,
                progress: bool = False, device: str | None = None, overwrite: bool = False) -> list[ProxyResult]:
    """Score many layouts in one call of their recall family's ``run_many`` (a family that scores by inheritance,
    e.g. ``supernet``; no LM run, ``train_lm: false``). Each result is what `run_proxy` would return for its
    layout, its ``wall_s`` the call's time shared equally; a failure of the call fails every layout.

    Raises:
        ConfigError: the config trains an LM or its family cannot score many at once; bad input (as `run_proxy`).
    """
    t0 = time.perf_counter()
    family = family_of(config.recall) if config.recall is not None else None
    if config.train_lm or family is None or family.run_many is None:
        raise ConfigError("proxy config: scoring many layouts in one call needs train_lm: false and a recall "
                          "family that scores many at once (recall: {family: supernet})")
    dev = resolve_device(device or config.device)
    outs = [_check_out(d, overwrite) for d in (out_dirs or [None] * len(layouts))]
    if len(outs) != len(layouts):
        raise ConfigError(f"run_proxies: {len(outs)} out_dirs for {len(layouts)} layouts")
    for layout in layouts:
        if family.check is not None:
            family.check(config.recall, layout)
    for out, layout in zip(outs, layouts):
        _write_inputs(out, layout, config)
    seeds = [config.seed + i for i in range(config.seeds)]
    try:
        scored = family.run_many(config, layouts, seeds, dev, progress)
        per_layout = [[{"status": "ok", **fields_} for fields_ in seeds_] for seeds_ in scored]
    except Exception as e:  # noqa: BLE001 - a failing call is a result of each trial, not a crash of the worker
        per_layout = [[_failure(e)] for _ in layouts]
    finally:
        _release(dev)
    share, peak = (time.perf_counter() - t0) / max(1, len(layouts)), _peak_mem(dev)
    results = []
    for layout, out, per_seed in zip(layouts, outs, per_layout):
        result = ProxyResult(**_base_fields(layout, config, dev), **aggregate_seeds(per_seed, seeds),
                             peak_mem_bytes=peak, wall_s=share)
        if out is not None:
            _write_json(result.to_dict(), out / "result.json")
        results.append(result)
    return results


def _check_out(out_dir: str | Path | None, overwrite: bool) -> Path | None:
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and (out / "result.json").exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a finished result.json; choose another out_dir or pass overwrite")
    return out


def _write_inputs(out: Path | None, layout: Layout, config: ProxyConfig) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        dump_yaml(config.to_dict(), out / "config.yaml")
        layout.dump(out / "layout.yaml")


def _base_fields(layout: Layout, config: ProxyConfig, dev: torch.device) -> dict[str, Any]:
    """The result fields every proxy of ``layout`` has: exact sizes and memory, names, device, versions, family."""
    counts = param_count(layout)
    mem = inference_memory(layout, config.memory_context, dtype=config.memory_dtype)
    return dict(params=counts.total, non_embedding_params=counts.non_embedding, kv_bytes=mem.kv_bytes,
                recurrent_bytes=mem.total_bytes - mem.kv_bytes, state_bytes=mem.total_bytes,
                context=config.memory_context, layout_key=layout.key(), layout_name=layout.name, device=str(dev),
                versions=_versions(), proxy_family=family_name(config.recall) if config.recall is not None else None)


def _failure(e: BaseException) -> dict[str, Any]:
    """A trial's failure as result fields (OOM and other errors are statuses, not crashes of the worker)."""
    if isinstance(e, torch.OutOfMemoryError):
        return dict(status="oom", fail_reason=str(e).splitlines()[0][:300] if str(e) else "out of memory")
    return dict(status="failed", fail_reason=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])


def _release(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _train_seed(layout: Layout, cfg: ProxyConfig, dev: torch.device, data: ProxyData,
                progress: bool, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One seed's LM run (nothing when ``train_lm`` is off)."""
    fields_: dict[str, Any] = {"status": "ok"}
    try:
        if cfg.train_lm:
            loop = _Loop(layout, cfg, dev, data, progress, on_step)
            try:
                fields_ = loop.run()
            finally:
                loop.release()
                del loop
    except Exception as e:  # noqa: BLE001 - a failing trial is a result, not a crash of the worker
        fields_ = _failure(e)
    finally:
        _release(dev)
    return fields_


def _score_recall(run: Callable[..., list[dict[str, Any]]], layout: Layout, config: ProxyConfig, seeds: list[int],
                  per_seed: list[dict[str, Any]], dev: torch.device, progress: bool) -> None:
    """Recall of every seed by a family scored apart from the LM run (``run``, e.g. the probe's); fills its fields
    into ``per_seed`` (or the first seed's status on a failure)."""
    try:
        for fields_, scored in zip(per_seed, run(config, layout, seeds, dev, progress), strict=True):
            fields_.update(scored)
    except Exception as e:  # noqa: BLE001 - a failing trial is a result, not a crash of the worker
        per_seed[0] = {**per_seed[0], **_failure(e)}
    finally:
        _release(dev)


class _Loop:
    """The training/evaluation loop state (kept in an object so OOM handling can drop every tensor)."""

    def __init__(self, layout: Layout, cfg: ProxyConfig, dev: torch.device, data: ProxyData,
                 progress: bool, on_step: Callable[[int], None] | None = None) -> None:
        self.layout, self.cfg, self.dev, self.data, self.progress = layout, cfg, dev, data, progress
        self.on_step = on_step
        self.model: Any = None
        self.fwd: Any = None
        self.opt: torch.optim.Optimizer | None = None
        self.bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and dev.type == "cuda")

    def release(self) -> None:
        self.model = self.opt = self.fwd = None

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One term of the loss mix (a method: tests poison it to check divergence)."""
        return token_loss(logits, targets)

    def _batch(self, step: int) -> MicroBatch:
        """Step ``step``'s rows on the device: LM rows, then the recall rows (in every step, or only in the final
        recall phase)."""
        cfg = self.cfg
        phase = cfg.suite.phase_steps if cfg.suite is not None else 0
        with_recall = not phase or step >= cfg.total_steps - phase
        lm_x, lm_y, rc_x, rc_y = self.data.train_batch(step, with_recall)
        if rc_x is None:
            return MicroBatch(lm_x.to(self.dev, non_blocking=True), lm_y.to(self.dev))
        return MicroBatch(torch.cat([lm_x, rc_x]).to(self.dev, non_blocking=True),
                          torch.cat([lm_y, rc_y]).to(self.dev), split=lm_x.shape[0])

    def _batch_loss(self, batch: MicroBatch) -> torch.Tensor:
        logits, _ = self.fwd(batch.inputs)
        return mixed_loss(logits, batch.targets, batch.split, self._loss)

    def run(self) -> dict[str, Any]:
        cfg, dev = self.cfg, self.dev
        torch.manual_seed(cfg.seed)
        model = HylaLM(self.layout, gradient_checkpointing=cfg.gradient_checkpointing)
        model.reset_parameters(std=cfg.init_std_for(self.layout.d_model))
        model = model.to(dev)
        self.model = model
        self.fwd = torch.compile(model) if (cfg.compile and dev.type == "cuda") else model
        self.opt = cfg.make_optimizer(model, dev)
        total = cfg.total_steps
        from tqdm.auto import tqdm
        bar = tqdm(total=total, disable=not self.progress, desc=self.layout.name or "proxy", leave=False)
        trainer = Trainer(model, self.opt, self._batch_loss, lambda step: lr_at(step, cfg), device=dev,
                          bf16=self.bf16, grad_clip=cfg.grad_clip)
        last = float("nan")
        model.train()
        for step in range(total):
            batch = self._batch(step)
            if self.on_step is not None:
                self.on_step(step)
            loss = trainer.step(step, [batch], check_finite=True)
            if loss is None:
                bar.close()
                return dict(status="diverged", fail_reason=f"non-finite loss at step {step}", diverged_step=step,
                            steps=step, tokens_seen=trainer.meter.tokens, train_loss=last)
            last = float(loss)
            bar.update(1)
            if step % cfg.log_every == 0 or step == total - 1:
                bar.set_postfix(loss=f"{last:.3f}")
        bar.close()
        tokens_per_s = trainer.meter.tokens_per_s()
        val = self.evaluate()
        return dict(status="ok", train_loss=last, steps=total, tokens_seen=trainer.meter.tokens,
                    tokens_per_s=tokens_per_s, **val)

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Held-out LM loss (token mean over the val batches) and the recall suite's accuracies
        (`hyla.proxy_train.train.evaluate`, as full runs score)."""
        self.model.eval()
        logits_fn = autocast_logits(lambda x: self.fwd(x)[0], self.dev, self.bf16)
        out: dict[str, Any] = {"lm_val_loss": lm_loss(logits_fn, self.data.val_batches())[0]}
        if self.data.suite is not None:
            scores = self.data.suite.evaluate(logits_fn, n_examples=self.cfg.suite.eval_examples,
                                              batch_size=self.data.eval_batch_size, seed=self.cfg.seed + 1_000_003)
            out["recall"] = float(scores["recall"])
            out["recall_tasks"] = {k: float(v) for k, v in scores.items() if k != "recall"}
        return out
