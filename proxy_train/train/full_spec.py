"""What a full-scale run trains: `RunSpec` (YAML, strict; `TrainConfig` plus scale, data, parallelism and the final
`EvalSpec`), `run_spec_for` (a layout's spec at a scale), the recall tasks of its final evaluation and the names
of its run directory's files. `hyla.proxy_train.train.full_run.train_full` runs a spec; the workers' loop is
`hyla.proxy_train.train.full_loop`.
"""


from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from hyla.config import ConfigError, dump_yaml, from_mapping, load_yaml, to_mapping
from hyla.proxy_train.train.config import TextConfig, TrainConfig
from hyla.space.layout import Layout
from hyla.space.presets import at_scale, get_scale, load_layout, resolve_preset

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
    the plain-torch regions (`HylaForCausalLM.compile_regions`: every block's MLP half, softmax attention's mixer
    half, the head and loss; fla's kernels stay eager); ``log_every`` also paces the Ray reports. The fused
    options, ``tf32`` and ``compile`` change kernels, not parameters: a checkpoint resumes and exports with any.
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
    fuse_norm: bool = False  # CUDA: fla's fused RMSNorm kernels, the residual add in the MLP's norm
    fuse_swiglu: bool = False  # CUDA: fla's fused SwiGLU + down projection (keeps fewer MLP activations)
    tf32: bool = False  # TF32 tensor cores for the fp32 matrix products outside autocast (the fused loss's)
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
    if Path(layout).suffix in (".yaml", ".yml") or Path(layout).is_file():
        return load_layout(layout)
    return resolve_preset(layout, default_scale="340m" if scale == "custom" else scale)


def scale_mismatch(layout: Layout, scale: str) -> str:
    """What differs between ``layout``'s shape and the preset ``scale``'s (``""`` when it is that scale's shape)."""
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
            layout = at_scale(lay, scale)
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
