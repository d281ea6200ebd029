"""`ProxyConfig`: everything that defines one proxy training of a layout, its presets and its LM schedule.

A proxy trains the layout briefly on LM text (``train_lm``) and scores recall one of the ways of
`hyla.proxy_train.proxy.recall` (the ``recall:`` mapping, picked by its ``family``); ``seeds`` repeats both. The
recipe's defaults (the width-scaled init std, a warmup-stable-decay schedule that keeps the peak lr until the
end) exist because recall forms abruptly after a plateau; the runs that showed it: docs/proxy-recipe.md.

Presets (``preset: NAME`` in a config, `ProxyConfig.load`):

- ``tiny``: a CPU smoke recipe (8 steps of 4 x 64 tokens, the ``tiny`` suite mixed in, a few eval examples): it
  checks plumbing end to end, not quality.
- ``small``: the GPU proxy: 24 x 256 layouts, T = 1024, batch 32, 39.3M tokens, the peak lr for 80 % of the
  steps; recall from the recall probe at width 64 (T = 128, 2-16 pairs, 1500 steps).

A config is parsed once (`ProxyConfig.from_dict`; a search parses each rung's when it loads the study) and travels
as this object: to a search worker, into `run_proxy`, into ``config.yaml`` of a run directory (`to_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyla.config import ConfigError, fields_to_mapping, from_mapping, load_yaml, tagged
from hyla.proxy_train.proxy.recall import RECALL_CONFIGS, RECALL_FAMILIES, RecallConfig, SuiteRecall, family_of
from hyla.proxy_train.train.config import TrainConfig, width_scaled_std
from hyla.proxy_train.train.schedule import wsd_lr

#: named starting points of a proxy config (``preset: NAME``; the other keys override the preset's)
PROXY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"scale": "tiny", "seq_len": 64, "batch_size": 4, "steps": 8, "lr": 3e-3, "warmup": 2,
             "text": {"source": "stdlib", "max_docs": 100}, "eval_batches": 1, "eval_batch_size": 4,
             "recall": {"family": "suite", "levels": "tiny", "mix": 0.25, "max_len": 64, "eval_examples": 4}},
    "small": {"scale": "small", "seq_len": 1024, "batch_size": 32, "tokens": 39_321_600, "lr": 1e-3,
              "warmup": 100, "decay_fraction": 0.2, "text": {"source": "stdlib"}, "eval_batches": 16,
              "eval_batch_size": 32,
              "recall": {"family": "probe", "seq_len": 128, "pairs": [2, 4, 8, 16], "steps": 1500,
                         "batch_size": 32, "lrs": [1e-3], "eval_every": 100, "width": 64, "scan_chunk": 16,
                         "concurrent": 16, "zero_init": "all"}},
}
# The retrofit family (issue 31) on each preset's LM run: recall from a cached teacher of the layout's shape, the
# level set its teacher solves at that scale (tiny: MQAR only, checked on CPU; small: levels the teacher does not
# solve are dropped and said so). Not the default: see benchmarks/results/fidelity_v2_cpu_tiny.md for its checks.
PROXY_PRESETS["tiny-retrofit"] = {**PROXY_PRESETS["tiny"],
                                  "recall": {"family": "retrofit", "levels": "retrofit-tiny-mqar"}}
PROXY_PRESETS["small-retrofit"] = {**PROXY_PRESETS["small"],
                                   "recall": {"family": "retrofit", "levels": "retrofit-small",
                                              "teacher": {"unsolved": "drop"}}}

#: the LM run's measured `ProxyResult` fields, and what a proxy needs to fill them (for error messages)
LM_SCORES = frozenset({"lm_val_loss", "tokens_per_s"})


@dataclass(frozen=True, kw_only=True)
class ProxyConfig(TrainConfig):
    """Everything that defines one proxy training (model shape comes from the layout).

    Attributes (besides `TrainConfig`'s: lr, min_lr_ratio, weight_decay, betas, grad_clip, seed, text, tokenizer,
    compile, gradient_checkpointing, log_every; what a shared field means for a proxy is noted here):
        scale: layout scale for preset names given without ``@scale`` (e.g. ``gla-6:1``).
        seq_len: training context T of the LM run (suite levels are padded/cut to it).
        batch_size: rows per step (text + suite recall rows).
        steps: optimizer steps; exactly one of ``steps`` / ``tokens`` must be set.
        tokens: training token budget; steps = ceil(tokens / (batch_size * seq_len)).
        warmup: linear warm-up steps.
        decay_fraction: `TrainConfig`'s warmup-stable-decay share (proxies keep the peak lr for most steps).
        init_std: std of the Linear/Embedding init (``HylaLM.reset_parameters``); None = width-scaled
            (`hyla.proxy_train.model.lm.width_scaled_std`: fla's 0.02 at d_model 1024, the same per-layer gain at
            proxy width).
        eval_batches: held-out LM batches (of ``eval_batch_size`` rows) for ``lm_val_loss``.
        eval_batch_size: rows per evaluation forward (None = batch_size).
        memory_context: context length at which KV/state bytes are reported.
        memory_dtype: dtype for the reported memory (model dtype at inference).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        dtype: ``auto`` = bf16 autocast on CUDA, fp32 on CPU; or force ``float32`` / ``bfloat16``.
        compile: torch.compile the model (CUDA only; ignored on CPU).
        log_every: progress-bar refresh interval in steps.
        recall: how recall is scored: a mapping whose ``family`` is ``suite`` (rows mixed into the LM run) or
            ``probe`` (the recall probe), with that family's fields (`hyla.proxy_train.proxy.recall`); null = no
            recall score.
        train_lm: train and score the LM part (False: recall only, scored by a family that runs apart from the
            LM; ``lm_val_loss`` is None).
        seeds: independent repeats with seeds ``seed, seed + 1, ...``; the result holds their mean, per-seed
            values and standard error (``ProxyResult.seed_values`` / ``sem``).
    """

    scale: str = "tiny"
    batch_size: int = 8
    steps: int | None = None
    warmup: int = 5
    init_std: float | None = None
    eval_batches: int = 2
    eval_batch_size: int | None = None
    memory_context: int = 2048
    memory_dtype: str = field(default="bfloat16", metadata={"choices": ("bfloat16", "float16", "float32")})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    dtype: str = field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16")})
    recall: RecallConfig | None = field(default_factory=SuiteRecall, metadata=tagged(RECALL_CONFIGS))
    train_lm: bool = True
    seeds: int = 1

    def __post_init__(self) -> None:
        w = "proxy config"
        self.check_training(f"{w}.")
        for name in ("batch_size", "eval_batches", "memory_context"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{w}.{name}: {getattr(self, name)} must be >= 1")
        if (self.steps is None) == (self.tokens is None):
            raise ConfigError(f"{w}: set exactly one of 'steps' and 'tokens' (got steps={self.steps}, "
                              f"tokens={self.tokens})")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"{w}.steps: {self.steps} must be >= 1")
        if self.init_std is not None and not self.init_std > 0:
            raise ConfigError(f"{w}.init_std: {self.init_std} must be > 0 (or null for the width-scaled default)")
        if isinstance(self.recall, SuiteRecall) and self.recall.mix > 0 and self.recall_rows < 1:
            raise ConfigError(f"{w}.recall.mix: {self.recall.mix} x batch_size {self.batch_size} rounds to 0 rows")
        if self.seeds < 1:
            raise ConfigError(f"{w}.seeds: {self.seeds} must be >= 1")
        if not self.train_lm and (self.recall is None or family_of(self.recall).in_lm_run):
            raise ConfigError(f"{w}.train_lm: false needs a recall family scored apart from the LM run (e.g. "
                              "recall: {family: probe}); nothing would be trained")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"{w}.eval_batch_size: {self.eval_batch_size} must be >= 1")

    @property
    def suite(self) -> SuiteRecall | None:
        """The recall suite mixed into the LM run (``family: suite``), else None."""
        return self.recall if isinstance(self.recall, SuiteRecall) else None

    @property
    def recall_rows(self) -> int:
        """Recall rows per LM training batch (the suite's share; 0 without a suite)."""
        return self.suite.rows(self.batch_size) if self.suite is not None else 0

    @property
    def scores(self) -> frozenset[str]:
        """The measured `ProxyResult` fields this proxy fills (the exact costs are always there): the LM run's
        ``lm_val_loss`` and ``tokens_per_s``, and the recall family's scores."""
        out = set(LM_SCORES) if self.train_lm else set()
        if self.recall is not None:
            out |= family_of(self.recall).scores
        return frozenset(out)

    def init_std_for(self, d_model: int) -> float:
        """The init std used for a model of width ``d_model`` (``init_std`` or the width-scaled default)."""
        return self.init_std if self.init_std is not None else width_scaled_std(d_model)

    @property
    def total_steps(self) -> int:
        """Optimizer steps (from ``steps`` or the token budget)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.tokens / (self.batch_size * self.seq_len)))

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "proxy config") -> ProxyConfig:
        """Parse a mapping; ``preset: NAME`` starts from that preset and the other keys override it (a ``recall``
        mapping replaces the preset's whole)."""
        data = dict(data or {})
        preset = data.pop("preset", None)
        if preset is not None:
            if preset not in PROXY_PRESETS:
                raise ConfigError(f"{where}.preset: unknown preset {preset!r}; expected one of "
                                  f"{', '.join(PROXY_PRESETS)}")
            base = dict(PROXY_PRESETS[preset])
            if "steps" in data or "tokens" in data:  # the override picks the budget kind
                base.pop("steps", None), base.pop("tokens", None)
            data = {**base, **data}
        return from_mapping(cls, data, where)

    @classmethod
    def load(cls, path_or_preset: str | Path) -> ProxyConfig:
        """A preset name (``tiny``, ``small``) or a YAML file (which may say ``preset: tiny`` and override)."""
        s = str(path_or_preset)
        if s in PROXY_PRESETS:
            return cls.from_dict({"preset": s}, where=f"preset {s}")
        if not (s.endswith((".yaml", ".yml")) or Path(s).exists()):
            raise ConfigError(f"proxy config: {s!r} is neither a preset ({', '.join(PROXY_PRESETS)}) nor a YAML file")
        data = load_yaml(s)
        if not isinstance(data, dict):
            raise ConfigError(f"{s}: expected a mapping at the top level, got {type(data).__name__}")
        return cls.from_dict(data, where=s)

    def to_dict(self) -> dict[str, Any]:
        """Plain data that `from_dict` parses back to an equal config (``recall`` with its ``family``)."""
        return fields_to_mapping(self)


def score_needs(field_name: str) -> str:
    """What a proxy config needs to fill the measured `ProxyResult` field ``field_name`` (for error messages)."""
    if field_name in LM_SCORES:
        return "an LM run (train_lm: true)"
    ways = [family.needs for family in RECALL_FAMILIES.values() if field_name in family.scores]
    return " or ".join(ways) if ways else "nothing hyla runs"


def lr_at(step: int, cfg: ProxyConfig) -> float:
    """The LR of a proxy LM run at ``step``: `hyla.proxy_train.train.schedule.wsd_lr` with the config's ``lr``,
    ``warmup``, ``decay_fraction`` and ``min_lr_ratio`` (linear warm-up, constant, then a cosine towards ``lr *
    min_lr_ratio`` over the last ``decay_fraction`` of the post-warm-up steps)."""
    return wsd_lr(step, cfg.total_steps, cfg.lr, cfg.warmup, cfg.decay_fraction, cfg.min_lr_ratio)
