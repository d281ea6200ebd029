"""Full-scale training of one layout (the paper's 340M / 1.3B runs) on Ray Train.

A `RunSpec` (YAML, strict) says what to train; `train_full(spec)` runs it through Ray Train's ``TorchTrainer``
(DDP or FSDP, one worker per GPU) and writes into ``spec.out_dir``::

    spec.yaml          the resolved spec (layout inline, tokens filled in)
    train_log.jsonl    one line per log step: step, loss, lr, tokens/s, MFU (rank 0)
    ray/attempt_N/     Ray Train checkpoints of attempt N (model, optimizer, scheduler, step, data cursor, RNG)
    model/             the final HF checkpoint (``AutoModelForCausalLM.from_pretrained`` after
                       ``import hyla``) plus the tokenizer when it is a transformers one; ``hyla analysis export
                       --checkpoint RUN_DIR`` writes it with fla-named weights too
    final.json         how the last attempt ended (``finished``, ``stopped`` or ``diverged``), written by every attempt
    result.json        status, steps, throughput, MFU and the final evaluation (finished runs only)

Resuming: every call scans ``out_dir`` for the checkpoint with the highest step and continues from it, so a run
killed at any point (SIGKILL, node loss) is restarted by running the same command again. SIGTERM (preemption)
is turned into a graceful stop: the driver drops a ``STOP`` file that the workers see within one step; they
write a checkpoint and exit, and the next call resumes. The worker loop lives in `hyla.proxy_train.train.full_loop`.

Data: each worker loads the documents of ``spec.text`` and keeps every ``world_size``-th one (sharded by rank),
packs only as many tokens as it will consume, and walks them in a seeded per-epoch permutation. The position in
that stream is one integer (micro-batches consumed), saved in each checkpoint. The packed tokens live in memory,
so a 20B-token run needs a text source of a size that fits (the stream repeats in new permutations once used up).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from hyla.config import ConfigError, dump_yaml, from_mapping, load_yaml, to_mapping
from hyla.proxy_train.train.text import TextConfig
from hyla.proxy_train.train.config import TrainConfig
from hyla.space.layout import Layout

#: default token budgets per scale (the paper: 20B tokens at 340M, 100B at 1.3B)
SCALE_TOKENS: dict[str, int] = {"340m": 20_000_000_000, "1.3b": 100_000_000_000}
#: dense bf16 peak FLOP/s per GPU, matched as a substring of ``torch.cuda.get_device_name()``
PEAK_FLOPS: dict[str, float] = {"H100": 989e12, "H200": 989e12, "A100": 312e12}
#: the paper's tokenizer family (Mistral/Llama, vocab 32000); ungated, but needs the hub or a local copy
DEFAULT_TOKENIZER = "mistralai/Mistral-7B-v0.1"
CKPT_META = "hyla_ckpt.json"
CKPT_STATE = "state.pt"
STOP_FILE = "STOP"


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """Final evaluation after training (rank 0)."""

    val_tokens: int = 2_000_000  # held-out LM tokens scored for the validation loss
    batch_size: int = 8  # sequences per eval forward
    recall_multiples: tuple[int, ...] = (1, 2, 4)  # recall suite at these multiples of seq_len (at most 4)
    recall_tasks: tuple[str, ...] = ("ruler_single", "mqar")  # recall task kinds run at every context
    recall_examples: int = 64  # examples per task and context
    lm_eval_tasks: tuple[str, ...] = ()  # lm-evaluation-harness tasks (run only if lm_eval is importable)
    lm_eval_limit: int | None = None  # examples per lm-eval task (None = all)

    def __post_init__(self) -> None:
        for m in self.recall_multiples:
            if not 1 <= m <= 4:
                raise ConfigError(f"eval.recall_multiples: {m!r} is not allowed; expected integers in [1, 4]")
        if self.val_tokens < 1 or self.batch_size < 1 or self.recall_examples < 0:
            raise ConfigError(f"eval: val_tokens ({self.val_tokens}), batch_size ({self.batch_size}) must be >= 1 "
                              f"and recall_examples ({self.recall_examples}) >= 0")


@dataclass(frozen=True, kw_only=True)
class RunSpec(TrainConfig):
    """One full-scale training run. Parse with `RunSpec.load` / `RunSpec.from_dict` (unknown keys refused).

    Besides the fields below it has `TrainConfig`'s (min_lr_ratio, decay_fraction, weight_decay, betas, grad_clip,
    seed, compile, gradient_checkpointing, log_every), which mean what they mean for a proxy. ``compile`` compiles
    the SwiGLU MLPs and norms in place (fla's kernels stay eager); ``log_every`` also paces the Ray reports.
    """

    WARMUP_FIELD: ClassVar[str] = "warmup_steps"

    layout: str | dict[str, Any]  # preset name (``gla-6:1@340m``), layout YAML path, or an inline layout dict
    scale: str = field(default="340m", metadata={"choices": ("340m", "1.3b", "custom")})  # preset scale; tokens
    tokens: int | None = None  # training tokens; None = the scale's default (20B at 340m, 100B at 1.3b)
    seq_len: int = 2048  # 2048 (paper v1) or 4096 (v2); other lengths only with scale "custom"
    global_batch_tokens: int = 524_288  # tokens per optimizer step over all workers (0.5M as in flame)
    micro_batch: int = 8  # sequences per worker per forward; gradient accumulation fills the global batch
    lr: float = 3e-4  # peak learning rate (fla/flame default)
    warmup_steps: int = 1024  # linear warm-up, then (decay_fraction 1.0) a cosine over the remaining steps
    text: TextConfig = field(default_factory=lambda: TextConfig(
        source="HuggingFaceFW/fineweb-edu", config="sample-10BT", max_docs=1_000_000))
    tokenizer: str = DEFAULT_TOKENIZER  # "byte" or a transformers tokenizer name/path
    checkpoint_every: int = 1000  # optimizer steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept by Ray per attempt
    out_dir: str = ""  # run directory ("" = runs/full/<layout key>); must be shared storage on a cluster
    num_workers: int = 1  # Ray Train workers (one per GPU)
    max_failures: int = 3  # worker-group restarts (from the newest checkpoint) before the attempt fails
    use_gpu: bool = True
    strategy: str = field(default="ddp", metadata={"choices": ("ddp", "fsdp")})
    bf16: bool = True  # bf16 autocast on CUDA (CPU runs in fp32)
    fused_loss: bool = False  # CUDA: fla's fused linear cross-entropy (no (B, T, vocab) logits tensor)
    eval: EvalSpec = field(default_factory=EvalSpec)

    def __post_init__(self) -> None:
        if self.seq_len not in (2048, 4096) and self.scale != "custom":
            raise ConfigError(f"seq_len: {self.seq_len} is not allowed at scale {self.scale!r}; expected 2048 or "
                              "4096 (use scale: custom for other lengths)")
        self.check_training("")
        positive = ("global_batch_tokens", "micro_batch", "checkpoint_every", "keep_checkpoints", "num_workers")
        if self.strategy == "fsdp" and not self.use_gpu:
            raise ConfigError("strategy: 'fsdp' needs use_gpu: true (Ray Train's FSDP is GPU-only); use 'ddp' on CPU")
        if self.max_failures < 0:
            raise ConfigError(f"max_failures: {self.max_failures!r} must be >= 0")
        for name in positive:
            v = getattr(self, name)
            if v < 1:
                raise ConfigError(f"{name}: {v!r} must be >= 1")
        if self.tokens is not None and self.tokens < self.global_batch_tokens:
            raise ConfigError(f"tokens: {self.tokens} is less than one global batch ({self.global_batch_tokens})")
        if self.tokens is None and self.scale == "custom":
            raise ConfigError("tokens: null is not allowed with scale 'custom'; give a token budget")
        per_step = self.seq_len * self.micro_batch * self.num_workers
        if self.global_batch_tokens % per_step:
            raise ConfigError(f"global_batch_tokens: {self.global_batch_tokens} is not a multiple of seq_len x "
                              f"micro_batch x num_workers = {per_step}")

    # -- derived ------------------------------------------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return int(self.tokens if self.tokens is not None else SCALE_TOKENS[self.scale])

    @property
    def accum_steps(self) -> int:
        """Micro-batches per worker per optimizer step."""
        return self.global_batch_tokens // (self.seq_len * self.micro_batch * self.num_workers)

    @property
    def total_steps(self) -> int:
        return math.ceil(self.total_tokens / self.global_batch_tokens)

    def resolve_layout(self) -> Layout:
        """The `Layout` to train: inline dict, YAML path, or preset (at ``scale`` unless the name has ``@``).

        Raises:
            ConfigError: at scale ``340m``/``1.3b``, a layout whose shape (depth, width, heads, MLP, vocab) is not
                that scale's: the spec would say 340m and train another model. Carry a proxy layout to the scale
                with `hyla.space.presets.at_scale` (promotion and `run_spec_for` do), or use ``scale: custom``.
        """
        layout = _load_layout(self.layout, self.scale)
        if self.scale != "custom" and (bad := scale_mismatch(layout, self.scale)):
            raise ConfigError(f"layout: not the shape of scale {self.scale} ({bad}); carry the layout to the scale "
                              "(hyla.space.presets.at_scale; a spec from an older `hyla search` promotion: delete "
                              "it and rerun the search to rewrite it) or set scale: custom")
        return layout

    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/full/{self.resolve_layout().key()}").resolve()

    # -- (de)serialisation ----------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, where: str = "spec") -> RunSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
        if "layout" not in data:
            raise ConfigError(f"{where}: missing field 'layout' (a preset name, a layout YAML path or a mapping)")
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON (``from_dict`` reads it back)."""
        names = ["layout", *(f.name for f in fields(self) if f.name != "layout")]  # the layout first
        out = {f: to_mapping(getattr(self, f)) for f in names}
        out["text"] = self.text.to_dict()
        return out

    def dump(self, path: str | Path) -> None:
        """Write the spec as YAML."""
        dump_yaml(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read a spec YAML (errors name the file and the field)."""
        return cls.from_dict(load_yaml(path), where=str(path))

    def resolved(self) -> RunSpec:
        """The same run with the layout inline and the token budget explicit (what ``spec.yaml`` records)."""
        # Local paths made absolute: Ray workers need not share the driver's working directory.
        text = self.text
        if Path(text.source).exists():
            text = replace(text, source=str(Path(text.source).resolve()))
        tokenizer = str(Path(self.tokenizer).resolve()) if Path(self.tokenizer).exists() else self.tokenizer
        return replace(self, layout=self.resolve_layout().to_dict(), tokens=self.total_tokens, text=text,
                       tokenizer=tokenizer, out_dir=str(self.run_dir()))


def _load_layout(layout: str | dict[str, Any], scale: str) -> Layout:
    """A spec's ``layout`` field as a Layout (inline dict, YAML path, or preset at ``scale``), unchecked."""
    if isinstance(layout, dict):
        return Layout.from_dict(layout, where="layout")
    from hyla.space.presets import load_layout, resolve_preset

    if Path(layout).suffix in (".yaml", ".yml") or Path(layout).is_file():
        return load_layout(layout)
    return resolve_preset(layout, default_scale="340m" if scale == "custom" else scale)


def scale_mismatch(layout: Layout, scale: str) -> str:
    """What differs between ``layout``'s shape and the preset ``scale``'s (``""`` when it is that scale's shape)."""
    from hyla.space.presets import get_scale

    s = get_scale(scale)
    pairs = [("n_layers", layout.n_layers, s.n_layers), ("d_model", layout.d_model, s.d_model),
             ("num_heads", layout.num_heads, s.num_heads), ("mlp_hidden", layout.mlp_hidden, s.mlp_hidden),
             ("vocab_size", layout.vocab_size, s.vocab_size)]
    return ", ".join(f"{f} {have} != {want}" for f, have, want in pairs if have != want)


def run_spec_for(layout: Layout | str, scale: str = "340m", tokens: int | None = None, **overrides: Any) -> RunSpec:
    """A spec with the paper's settings for ``layout`` at ``scale`` (tokens default: 20B at 340m, 100B at 1.3b).

    A layout of another shape (a proxy winner) is carried to ``scale`` by `hyla.space.presets.at_scale` (its
    pattern at the scale's width, heads, MLP, vocab and depth) and written inline, so the spec's YAML is the
    model that trains. A preset name is kept as a name when it resolves at ``scale``. ``scale="custom"`` keeps
    the layout as it is.
    """
    if scale != "custom":
        lay = layout if isinstance(layout, Layout) else _load_layout(layout, scale)
        if scale_mismatch(lay, scale):
            layout = lay.at_scale(scale)
    lay_field = layout.to_dict() if isinstance(layout, Layout) else layout
    return RunSpec(layout=lay_field, scale=scale, tokens=tokens, **overrides)


def peak_flops(device_name: str | None) -> float | None:
    """Dense bf16 peak FLOP/s of one GPU from `PEAK_FLOPS`, or None when the device is not in the table."""
    for key, value in PEAK_FLOPS.items():
        if device_name and key in device_name:
            return value
    return None


def recall_tasks(spec: RunSpec, vocab_size: int, tok: Any, haystack: list[str]) -> list[Any]:
    """The eval recall tasks at every context; raises ConfigError for unknown tasks or contexts they do not fit.

    Used by `train_full` (to refuse a bad spec before any training) and by the workers' final evaluation.
    """
    from hyla.proxy_train.tasks.mqar import MQAR
    from hyla.proxy_train.tasks.ruler import NeedleTask

    tasks = []
    for mult in spec.eval.recall_multiples:
        length = spec.seq_len * mult
        for name in spec.eval.recall_tasks:
            if name == "mqar":  # Zoology's density: one pair per 16 tokens, at most the 64 keys of task_vocab 128
                tasks.append(MQAR(vocab_size=vocab_size, seq_len=length, num_kv_pairs=max(1, min(64, length // 16))))
            elif name.startswith("ruler_"):
                try:
                    tasks.append(NeedleTask(tokenizer=tok, haystack_docs=tuple(haystack[:64]), seq_len=length,
                                            kind=name.removeprefix("ruler_")))
                except ConfigError as e:
                    raise ConfigError(f"eval.recall_tasks: {name} at context {length} (seq_len x {mult}): {e}") \
                        from None
            else:
                raise ConfigError(f"eval.recall_tasks: unknown task {name!r}; expected mqar or ruler_<kind> "
                                  "(single, multikey, multivalue, multiquery)")
    return tasks


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
    else:  # a small local instance: logical CPUs for the workers plus the Train controller
        ray.init(num_cpus=num_workers + 1, include_dashboard=False, object_store_memory=256 * 2**20)


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
    from hyla.proxy_train.train.text import get_tokenizer

    layout = spec.resolve_layout()
    tok = get_tokenizer(spec.tokenizer)
    if tok.vocab_size > layout.vocab_size:
        raise ConfigError(f"tokenizer: {spec.tokenizer!r} has {tok.vocab_size} ids but layout vocab_size is "
                          f"{layout.vocab_size}; use a layout with vocab_size >= {tok.vocab_size}")
    recall_tasks(spec, layout.vocab_size, tok, [])  # bad recall tasks/lengths fail here, before any training
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

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from hyla.proxy_train.train.full_loop import train_loop_per_worker  # lazy: torch; the loop imports this module

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
                             failure_config=FailureConfig(max_failures=spec.max_failures)),
    )
    # Preemption: SIGTERM asks the workers (through the STOP file) to checkpoint and leave.
    previous = signal.signal(signal.SIGTERM, lambda *_: (run_dir / STOP_FILE).touch())
    (run_dir / "final.json").unlink(missing_ok=True)
    t0 = time.time()
    try:
        trainer.fit()
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
