"""Proxy configuration and result: `ProxyConfig` (presets ``tiny``/``small``), `ProxyResult` and the LR schedule.

Why recall is learned at all (measured on CPU, 2-layer attention, d_model 64, MQAR T=32 with 4-8 pairs mixed
into LM text, ``tests/test_train.py::test_attention_learns_mqar_and_linear_ranks_lower``). MQAR is solved by an
induction circuit (a previous-token head, then a head matching the query key), which forms abruptly after a
plateau at "some value of the context" (accuracy 1/P). Two things kept tiny models on that plateau:

- Init scale. fla/flame's flat std 0.02 is tuned for d_model ~1024; at d 64 (per-layer gain 0.02 * sqrt(64) =
  0.16) attention logits stay near zero and the circuit had not formed after 2000-3000 steps (accuracy
  0.25-0.32 at lr 1e-3 or 3e-3, also with d 128, 4 heads or filler without keys; a plain GPT with PyTorch's
  default init solved the same data in 400 steps). Std 0.04 still failed in 600 steps, 0.05-0.1 solved it by
  step 300. Hence ``init_std`` defaults to the width-scaled
  ``0.02 * sqrt(1024 / d_model)`` (0.02 at 1024, 0.04 at 256, 0.08 at 64, 0.11 at 32).
- Schedule. A cosine to 10 % over 400 steps decays the lr before the circuit forms (0.29-0.44 at step 400);
  a constant lr after warm-up reached 0.999-1.0 by step 400 (3 seeds); lr 2e-3 is less reliable (1 of 2 seeds
  failed), 1e-2 never left the plateau. Hence ``decay_fraction`` (warmup-stable-decay): proxies keep the peak lr
  and decay only at the end.

The exploratory numbers above came from one-off runs; the rerunnable check is ``benchmarks/bench_recall.py``
(4 attention layers, d 64, 450 steps, seeds 0/1): 1.00 with these defaults, 0.20 with ``--set init_std=0.02``,
0.45 with ``--set min_lr_ratio=0.1`` (cosine to 10 %); results in ``benchmarks/results/bench_recall_cpu*.json``.

MQAR's filler also no longer repeats the example's keys (see ``tasks/mqar.py``). With this recipe a pure-GLA
model of the same size stays at 0.15-0.25 on the same levels, so the recall score ranks layouts.

Presets (``ProxyConfig.load("tiny")``):

- ``tiny``: CPU smoke scale: 8 steps of 4 x 64 tokens, recall levels up to T = 64, a few eval examples. It
  checks plumbing end to end, not quality. Its cost is dominated by the 24-layer ``tiny`` layouts' CPU mixer
  paths: ``hyla proxy train gla-6:1 --config tiny`` took 46 s wall (41 s in run_proxy, ~70 tokens/s) on a
  shared 2-core machine under moderate load (fla's import alone is ~10-20 s). For a CPU run that learns something,
  use a shallow custom layout and the recipe of ``benchmarks/bench_recall.py`` (4 x d 64, T = 32, 450
  steps, 2-5 min per layout on 2 cores). The ``tiny`` recall suite (MQAR 4/8/16 pairs over 32 symbols, MAD
  in-context recall and selective copying; RULER levels only when ``recall_max_len`` allows) stays at chance
  in 8 steps.
- ``small``: GPU proxy. 24 x 256 layouts; LM: T = 1024, batch 32, 1200 steps = 39M tokens (to scale, keep
  ``seq_len`` and change ``tokens`` or ``steps``; the schedule follows the step count), init std 0.04
  (width-scaled), peak lr for the first 80 % of the steps. Recall: the recall probe
  (``hyla.proxy_train.probe.config``: MQAR alone, the layout's 24-layer pattern narrowed to width 64, T = 128
  over 2-16 pairs, 1500 steps of 32 rows at lr 1e-3, previous-token help, zero-initialised residual outputs,
  curriculum, early stop), not rows mixed into the LM run: mixed recall at this scale left the Transformer on
  the plateau (H100 paper grid, ``benchmarks/grid_proxy.yaml``: 0.065 after 450 steps). Each part of the recipe
  was an ablation on the H200 or on CPU (README, "GPU notes" and "Recall probe"): width 128 kept GLA 3:1 on the
  plateau where width 64 solved it; 32 pairs (128 symbols) kept every hybrid there; lr 3e-3 helped no hybrid
  in the runs made (hence one lr, which halves the cost); zero-init let deep hybrids leave the plateau.
  Calibrated on one H200 (16 layouts x 3 seeds, ``benchmarks/results/probe_h200/calibration_w64_375_1500.*``):
  seed agreement 0.83; the Transformer, GDN 3:1/6:1 and GLA 3:1 solved (0.996-0.999, s.e.m. <= 0.002); the
  24:1 hybrids (one attention layer) and every HGRN-2 hybrid stay on the 1/pairs plateau (0.23-0.25) with the
  pure layouts, so the trend target is missed. (That calibration predates equal states at narrow widths: its
  HGRN-2 and DeltaNet layers had one head and twice GLA's state; `hyla.space.mixer_kinds`. It also predates fla's
  forget-gate lower bounds in HGRN/HGRN-2 layers; `hyla.proxy_train.model.lm`.)

The recall score (``RecallSuite.evaluate``): accuracy per level, averaged over the levels of a task, then over
tasks. Each level's accuracy is the share of scored answer tokens predicted exactly (RULER: whole answers).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyla.config import ConfigError, from_mapping, load_yaml, to_mapping
from hyla.proxy_train.train.schedule import wsd_lr
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.train.config import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"scale": "tiny", "seq_len": 64, "batch_size": 4, "steps": 8, "lr": 3e-3, "warmup": 2,
             "text": {"source": "stdlib", "max_docs": 100}, "recall_suite": "tiny", "recall_mix": 0.25,
             "recall_max_len": 64, "eval_batches": 1, "recall_eval_examples": 4, "eval_batch_size": 4},
    "small": {"scale": "small", "seq_len": 1024, "batch_size": 32, "tokens": 39_321_600, "lr": 1e-3,
              "warmup": 100, "decay_fraction": 0.2, "text": {"source": "stdlib"}, "recall_suite": "none",
              "recall_mix": 0.0, "eval_batches": 16, "recall_eval_examples": 256, "eval_batch_size": 32,
              "recall_probe": {"seq_len": 128, "pairs": [2, 4, 8, 16], "steps": 1500, "batch_size": 32,
                               "lrs": [1e-3], "eval_every": 100, "width": 64, "scan_chunk": 16,
                               "concurrent": 16, "zero_init": "all"}},
}


#: what a proxy needs to fill each measured `ProxyResult` score (`ProxyConfig.scores`), for error messages
SCORE_NEEDS: dict[str, str] = {
    "lm_val_loss": "an LM run (train_lm: true)", "tokens_per_s": "an LM run (train_lm: true)",
    "recall": "a recall suite or the recall probe (recall_probe)", "recall_auc": "the recall probe (recall_probe)"}


@dataclass(frozen=True, kw_only=True)
class ProxyConfig(TrainConfig):
    """Everything that defines one proxy training (model shape comes from the layout).

    Attributes (besides `TrainConfig`'s: lr, min_lr_ratio, weight_decay, betas, grad_clip, seed, text,
    gradient_checkpointing; what a shared field means for a proxy is noted here):
        scale: layout scale for preset names given without ``@scale`` (e.g. ``gla-6:1``).
        seq_len: training context T (recall tasks are padded/cut to it).
        batch_size: rows per step (text + recall).
        steps: optimizer steps; exactly one of ``steps`` / ``tokens`` must be set.
        tokens: training token budget; steps = ceil(tokens / (batch_size * seq_len)).
        warmup: linear warm-up steps.
        decay_fraction: `TrainConfig`'s warmup-stable-decay share. Recall forms abruptly (an induction circuit)
            once enough steps ran at a high lr; an early decay delays it past the proxy budget (module docstring).
        init_std: std of the Linear/Embedding init (``HylaLM.reset_parameters``). None = width-scaled
            ``0.02 * sqrt(1024 / d_model)``: the full-scale recipe's 0.02 at d_model 1024 with the same per-layer
            gain at proxy width (0.08 at d 64, 0.04 at d 256). A flat 0.02 at d <= 256 leaves attention logits
            so small that induction (recall) does not form within a proxy budget (module docstring).
        tokenizer: its vocab must fit the layout's.
        recall_suite: recall suite preset (``tiny``, ``small``) or ``none``.
        recall_mix: fraction of each batch's rows that are recall tasks (0 = LM only).
        recall_tasks: explicit suite levels (``{task, seq_len, params}`` mappings, see
            ``hyla.proxy_train.tasks.suite``); when given they replace ``recall_suite``'s preset.
        recall_phase_steps: if > 0, recall rows only in the last this-many steps.
        recall_max_len: drop suite levels longer than this (None = keep all; levels longer than ``seq_len``
            are evaluated but not trained on, i.e. they measure length generalisation).
        eval_batches: held-out LM batches (of ``eval_batch_size`` rows) for ``lm_val_loss``.
        recall_eval_examples: held-out examples per recall task level.
        eval_batch_size: rows per evaluation forward (None = batch_size).
        memory_context: context length at which KV/state bytes are reported.
        memory_dtype: dtype for the reported memory (model dtype at inference).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        dtype: ``auto`` = bf16 autocast on CUDA, fp32 on CPU; or force ``float32`` / ``bfloat16``.
        compile: torch.compile the model (CUDA only; ignored on CPU).
        log_every: progress-bar refresh interval in steps.
        recall_probe: score recall with the separate MQAR probe (``hyla.proxy_train.probe.config``) instead of
            recall rows mixed into the LM run; then ``recall_mix`` must be 0 and the suite is not used.
        train_lm: train and score the LM part (False: recall probe only, ``lm_val_loss`` is None).
        seeds: independent repeats with seeds ``seed, seed + 1, ...``; the result holds their mean, per-seed
            values and standard error (``ProxyResult.seed_values`` / ``sem``).
    """

    scale: str = "tiny"
    batch_size: int = 8
    steps: int | None = None
    warmup: int = 5
    init_std: float | None = None
    recall_suite: str = "tiny"
    recall_mix: float = 0.25
    recall_tasks: tuple[dict[str, Any], ...] = ()
    recall_phase_steps: int = 0
    recall_max_len: int | None = None
    eval_batches: int = 2
    recall_eval_examples: int = 16
    eval_batch_size: int | None = None
    memory_context: int = 2048
    memory_dtype: str = field(default="bfloat16", metadata={"choices": ("bfloat16", "float16", "float32")})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    dtype: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16")})
    recall_probe: RecallProbeConfig | None = None
    train_lm: bool = True
    seeds: int = 1

    def __post_init__(self) -> None:
        w = "proxy config"
        self.check_training(f"{w}.")
        for name in ("batch_size", "eval_batches", "recall_eval_examples", "memory_context"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{w}.{name}: {getattr(self, name)} must be >= 1")
        if (self.steps is None) == (self.tokens is None):
            raise ConfigError(f"{w}: set exactly one of 'steps' and 'tokens' (got steps={self.steps}, "
                              f"tokens={self.tokens})")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{w}.steps: {self.steps} must be >= 1")
        if self.recall_phase_steps < 0:
            raise ConfigError(f"{w}.recall_phase_steps: {self.recall_phase_steps} must be >= 0")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"{w}.init_std: {self.init_std} must be > 0 (or null for the width-scaled default)")
        if not 0.0 <= self.recall_mix < 1.0:
            raise ConfigError(f"{w}.recall_mix: {self.recall_mix} must be in [0, 1) (some rows must be LM text)")
        if self.recall_mix > 0 and not self.has_recall:
            raise ConfigError(f"{w}.recall_mix: {self.recall_mix} > 0 needs a recall_suite (got 'none')")
        if self.recall_mix > 0 and self.recall_rows < 1:
            raise ConfigError(f"{w}.recall_mix: {self.recall_mix} x batch_size {self.batch_size} rounds to 0 rows")
        if self.seeds < 1:
            raise ConfigError(f"{w}.seeds: {self.seeds} must be >= 1")
        if self.recall_probe is not None and self.recall_mix > 0:
            raise ConfigError(f"{w}.recall_mix: {self.recall_mix} must be 0 with a recall_probe (recall is then "
                              "trained apart from the LM)")
        if not self.train_lm and self.recall_probe is None:
            raise ConfigError(f"{w}.train_lm: false needs a recall_probe (nothing would be trained)")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"{w}.eval_batch_size: {self.eval_batch_size} must be >= 1")

    @property
    def recall_rows(self) -> int:
        """Recall rows per training batch."""
        return int(round(self.batch_size * self.recall_mix)) if self.has_recall else 0

    @property
    def scores(self) -> frozenset[str]:
        """The measured `ProxyResult` fields this proxy fills (the exact costs are always there): the LM run's
        ``lm_val_loss`` and ``tokens_per_s``, ``recall`` from the suite or the probe, ``recall_auc`` from the
        probe only."""
        out = {"lm_val_loss", "tokens_per_s"} if self.train_lm else set()
        if self.has_recall or self.recall_probe is not None:
            out.add("recall")
        if self.recall_probe is not None:
            out.add("recall_auc")
        return frozenset(out)

    @property
    def has_recall(self) -> bool:
        """Whether a recall suite is trained/evaluated (a preset or explicit ``recall_tasks``, and no probe)."""
        return self.recall_probe is None and (self.recall_suite != "none" or bool(self.recall_tasks))

    def init_std_for(self, d_model: int) -> float:
        """The init std used for a model of width ``d_model`` (``init_std`` or the width-scaled default)."""
        return self.init_std if self.init_std is not None else 0.02 * math.sqrt(1024 / d_model)

    @property
    def total_steps(self) -> int:
        """Optimizer steps (from ``steps`` or the token budget)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "proxy config") -> ProxyConfig:
        """Parse a mapping; ``preset: NAME`` starts from that preset and the other keys override it."""
        data = dict(data or {})
        preset = data.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"{where}.preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
            base = dict(PRESETS[preset])
            if "steps" in data or "tokens" in data:  # the override picks the budget kind
                base.pop("steps", None), base.pop("tokens", None)
            data = {**base, **data}
        return from_mapping(cls, data, where)

    @classmethod
    def load(cls, path_or_preset: str | Path) -> ProxyConfig:
        """A preset name (``tiny``, ``small``) or a YAML file (which may say ``preset: tiny`` and override)."""
        s = str(path_or_preset)
        if s in PRESETS:
            return cls.from_dict({"preset": s}, where=f"preset {s}")
        if not (s.endswith((".yaml", ".yml")) or Path(s).exists()):
            raise ConfigError(f"proxy config: {s!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
        data = load_yaml(s)
        if not isinstance(data, dict):
            raise ConfigError(f"{s}: expected a mapping at the top level, got {type(data).__name__}")
        return cls.from_dict(data, where=s)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: to_mapping(getattr(self, f.name)) for f in dataclasses.fields(self)}
        out["betas"] = list(self.betas)
        return out


@dataclass(frozen=True, kw_only=True)
class ProxyResult:
    """Outcome of one proxy training (JSON-serialisable via `to_dict`).

    Memory fields are per sequence at ``context`` tokens in ``memory_dtype``: ``kv_bytes`` = softmax KV caches,
    ``recurrent_bytes`` = linear-mixer recurrent + short-conv states, ``state_bytes`` = their sum (all inference
    state). ``peak_mem_bytes`` is CUDA max allocated on GPU, the process peak RSS on CPU.

    ``recall_auc`` (recall probe only) is the area under the probe's learning curve (`recall_probe.curve_auc`).

    Noise: ``lm_val_loss``, ``recall``, ``recall_auc``, ``train_loss`` and ``recall_tasks`` are means over ``seeds``;
    ``seed_values[metric]`` holds one value per seed and ``sem[metric]`` the standard error of the mean
    (sample std / sqrt(n); None with one seed, where the spread is unknown). ``probe`` has one entry per seed
    when recall comes from the recall probe (best LR, per-LR scores, learning curves).
    """

    status: str
    fail_reason: str | None = None
    lm_val_loss: float | None = None
    recall: float | None = None
    recall_auc: float | None = None
    recall_tasks: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    params: int = 0
    non_embedding_params: int = 0
    kv_bytes: int = 0
    recurrent_bytes: int = 0
    state_bytes: int = 0
    context: int = 0
    tokens_seen: int = 0
    tokens_per_s: float | None = None
    peak_mem_bytes: int | None = None
    wall_s: float = 0.0
    steps: int = 0
    diverged_step: int | None = None
    layout_key: str = ""
    layout_name: str = ""
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    seed_values: dict[str, list[float]] = field(default_factory=dict)
    sem: dict[str, float | None] = field(default_factory=dict)
    probe: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyResult:
        return cls(**data)


def lr_at(step: int, cfg: ProxyConfig) -> float:
    """The LR of a proxy LM run at ``step``: `lr_schedule.wsd_lr` with the config's ``lr``, ``warmup``,
    ``decay_fraction`` and ``min_lr_ratio`` (linear warm-up, constant, then a cosine towards ``lr * min_lr_ratio``
    over the last ``decay_fraction`` of the post-warm-up steps)."""
    return wsd_lr(step, cfg.total_steps, cfg.lr, cfg.warmup, cfg.decay_fraction, cfg.min_lr_ratio)
