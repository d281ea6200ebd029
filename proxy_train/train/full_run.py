"""Full-scale training of one layout (the paper's 340M / 1.3B runs) on Ray Train.

A `RunSpec` (YAML, strict) says what to train; `train_full(spec)` runs it through Ray Train's ``TorchTrainer``
(DDP or FSDP, one worker per GPU) and writes into ``spec.out_dir``::

    spec.yaml          the resolved spec (layout inline, tokens filled in)
    train_log.jsonl    one line per log step: step, loss, lr, tokens/s, MFU, peak GPU memory (rank 0); also
                       each process's first step, with ``startup`` (seconds to the model, the data, the end
                       of that step: a cold start's compilation shows there)
    ray/attempt_N/     Ray Train checkpoints of attempt N (model, optimizer, scheduler, step, data cursor, RNG)
    model/             the final HF checkpoint (``AutoModelForCausalLM.from_pretrained`` after
                       ``import hyla``) plus the tokenizer when it is a transformers one; ``hyla analysis export
                       --checkpoint RUN_DIR`` writes it with fla-named weights too
    final.json         how the last attempt ended (``finished``, ``stopped`` or ``diverged``), written by every attempt
    result.json        status, steps, throughput, MFU and the final evaluation (finished runs only)

Resuming: every call scans ``out_dir`` for the checkpoint with the highest step and continues from it, so a run
killed at any point (SIGKILL, node loss) is restarted by running the same command again. SIGTERM (preemption)
is turned into a graceful stop: the driver drops a ``STOP`` file that the workers see within one step; they
write a checkpoint and exit, and the next call resumes. The worker loop lives in `hyla.proxy_train.train.full_loop`,
the spec in `hyla.proxy_train.train.full_spec`.

Data: each worker loads the documents of ``spec.text`` and keeps every ``world_size``-th one (sharded by rank),
packs only as many tokens as it will consume, and walks them in a seeded per-epoch permutation. The position in
that stream is one integer (micro-batches consumed), saved in each checkpoint. The packed tokens live in memory,
so a 20B-token run needs a text source of a size that fits (the stream repeats in new permutations once used up).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.proxy_train.train.full_loop import train_loop_per_worker
from hyla.proxy_train.train.full_spec import CKPT_META, CKPT_STATE, STOP_FILE, RunSpec, recall_tasks


def find_latest_checkpoint(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The complete checkpoint with the highest step under ``run_dir`` (any attempt), with its metadata.

    A checkpoint counts only when both its metadata and its state file exist (a copy cut by a kill is skipped).
    """
    best: tuple[Path, dict[str, Any]] | None = None
    for meta_path in Path(run_dir).glob(f"ray/*/checkpoint_*/{CKPT_META}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        state = meta_path.parent / CKPT_STATE
        if not state.is_file() or state.stat().st_size != meta.get("state_bytes"):
            continue
        if best is None or meta["step"] > best[1]["step"]:
            best = (meta_path.parent, meta)
    return best


def _prune_checkpoints(run_dir: Path, keep: Path) -> None:
    """Delete the checkpoints of earlier attempts except ``keep`` (Ray's ``num_to_keep`` works per attempt only,
    and a 340M checkpoint with optimizer state is ~4 GiB)."""
    for meta_path in run_dir.glob(f"ray/*/checkpoint_*/{CKPT_META}"):
        if meta_path.parent.resolve() != keep.resolve():
            shutil.rmtree(meta_path.parent, ignore_errors=True)


def _init_ray(address: str | None, num_workers: int) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:  # a small local instance: logical CPUs for the workers plus the Train controller. The dashboard serves
        # the State API that Ray Train's placement-group cleaner polls: without it, every poll logs "Failed to
        # query Ray Train Controller actor state" to the console.
        ray.init(num_cpus=num_workers + 1, include_dashboard=True, object_store_memory=256 * 2**20)


def check_inputs(spec: RunSpec, hub: bool = True) -> list[str]:
    """What `train_full` and ``hyla train --dry-run`` refuse before Ray starts: the layout (at the scale's shape),
    the text source (`check_text_source`: nothing is read), the tokenizer (loaded; at most the layout's
    vocabulary) and the recall tasks at their contexts.

    Args:
        spec: the run.
        hub: inputs that only the Hugging Face hub has must be checkable here; False (dry runs) lists them as
            unchecked instead (the hub may be reachable where the run goes).

    Returns:
        One line per input that could not be checked here (empty with ``hub``).
    """
    from hyla.proxy_train.train.text import HubUnreachable, check_text_source, get_tokenizer

    layout, unchecked = spec.resolve_layout(), []

    def on_hub(check: Any) -> Any:
        try:
            return check()
        except HubUnreachable as e:
            if hub:
                raise
            unchecked.append(str(e))
            return None

    on_hub(lambda: check_text_source(spec.text))
    tok = on_hub(lambda: get_tokenizer(spec.tokenizer))
    if tok is None:
        return unchecked
    if tok.vocab_size > layout.vocab_size:
        raise ConfigError(f"tokenizer: {spec.tokenizer!r} has {tok.vocab_size} ids but layout vocab_size is "
                          f"{layout.vocab_size}; use a layout with vocab_size >= {tok.vocab_size}")
    recall_tasks(spec, layout.vocab_size, tok, [])  # bad recall tasks/lengths fail here, before any training
    return unchecked


def _stop_on_config_error() -> Any:
    """A Ray Train callback: a `ConfigError` in a worker is bad input, not a crash, so the run fails at once instead
    of restarting the worker group ``max_failures`` times (Ray Train retries every worker error; an error raised in
    a callback stops its controller without a retry)."""
    from ray.train import UserCallback

    class StopOnConfigError(UserCallback):
        def after_exception(self, run_context: Any, worker_exceptions: dict[int, BaseException]) -> None:
            for error in worker_exceptions.values():
                if isinstance(error, ConfigError):
                    raise ConfigError(str(error))

    return StopOnConfigError()


def train_full(spec: RunSpec, address: str | None = None, resume: bool = True) -> dict[str, Any]:
    """Train ``spec`` on Ray Train, evaluate, and write the run directory (see the module docstring).

    Args:
        spec: the run.
        address: a Ray cluster address (``ray://host:10001`` or ``auto``); None starts a small local instance.
        resume: continue from the newest checkpoint in the run directory; False refuses a directory that has one.

    Returns:
        The ``result.json`` content. ``status`` is ``finished``, ``stopped`` (SIGTERM: resume later) or
        ``diverged`` (a non-finite mean loss in a log window; training stopped there, not checkpointed).

    Raises:
        ConfigError: bad spec, a tokenizer larger than the layout's vocabulary, or a run directory that holds
            a finished result (never overwritten) or checkpoints while ``resume`` is False.
    """
    check_inputs(spec)
    run_dir = spec.run_dir()
    result_path = run_dir / "result.json"
    if result_path.is_file():
        if resume:
            return json.loads(result_path.read_text())
        raise ConfigError(f"out_dir: {run_dir} already holds a finished result.json; choose another out_dir")
    latest = find_latest_checkpoint(run_dir)
    if latest is not None and not resume:
        raise ConfigError(f"out_dir: {run_dir} has checkpoints (step {latest[1]['step']}) and resume is off; "
                          "resume or choose another out_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = spec.resolved()
    resolved.dump(run_dir / "spec.yaml")
    (run_dir / STOP_FILE).unlink(missing_ok=True)

    from ray.train import CheckpointConfig, ControllerError, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    _init_ray(address, spec.num_workers)
    if latest is not None:
        _prune_checkpoints(run_dir, keep=latest[0])
    attempt = 1 + len(list((run_dir / "ray").glob("attempt_*")))
    trainer = TorchTrainer(
        train_loop_per_worker,
        # Ray Train v2 dropped resume_from_checkpoint: the workers load our newest checkpoint by path (shared
        # storage), and Ray's own restore (get_checkpoint) covers worker restarts within this attempt.
        train_loop_config={"spec": resolved.to_dict(), "run_dir": str(run_dir),
                           "resume_path": str(latest[0]) if latest else None},
        scaling_config=ScalingConfig(num_workers=spec.num_workers, use_gpu=spec.use_gpu,
                                     resources_per_worker={"GPU": 1} if spec.use_gpu else {"CPU": 1}),
        run_config=RunConfig(storage_path=str(run_dir / "ray"), name=f"attempt_{attempt}",
                             checkpoint_config=CheckpointConfig(num_to_keep=spec.keep_checkpoints),
                             failure_config=FailureConfig(max_failures=spec.max_failures),
                             callbacks=[_stop_on_config_error()]),
    )
    # Preemption: SIGTERM asks the workers (through the STOP file) to checkpoint and leave.
    previous = signal.signal(signal.SIGTERM, lambda *_: (run_dir / STOP_FILE).touch())
    (run_dir / "final.json").unlink(missing_ok=True)
    t0 = time.time()
    try:
        trainer.fit()
    except ControllerError as e:
        if isinstance(e.controller_failure, ConfigError):  # from _stop_on_config_error: one line, exit 2
            import ray

            ray.shutdown()  # Ray's own log lines of the failure come before the one-line error, not after it
            raise ConfigError(f"{e.controller_failure} (in a Ray Train worker; not retried)") from None
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = json.loads((run_dir / "final.json").read_text())
    final["wall_s_this_attempt"] = round(time.time() - t0, 2)
    final["attempt"] = attempt
    final["resumed_from_step"] = latest[1]["step"] if latest else None
    # final.json records every attempt's end (also a stop); result.json only the finished run.
    for path in [run_dir / "final.json"] + ([result_path] if final["status"] == "finished" else []):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(final, indent=2))
        tmp.replace(path)
    return final
