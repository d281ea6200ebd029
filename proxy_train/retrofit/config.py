"""The retrofit proxy's recipe: how the teacher, stage 1 (attention transfer) and stage 2 (distillation) train.

Three frozen dataclasses, one per part, under `RetrofitConfig`. Each part's fields enter its cache key (the
teacher's and stage 1's results are cached, `hyla.proxy_train.retrofit.cache`), so a changed recipe never reads a
stale entry. The defaults are the recipe the CPU experiments at ``tiny`` settled on
(``benchmarks/results/retrofit_notes.md``); every field says why it is there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from hyla.config import ConfigError, from_mapping
from hyla.proxy_train.train.config import TextConfig


def _positive(where: str, **values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{where}.{name}: {value!r} must be > 0")


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """How the softmax-attention teacher trains (`hyla.proxy_train.retrofit.teacher`).

    Attributes:
        recall_steps: first phase, recall rows only. At lr 3e-3 a 24 x 32 Transformer leaves the MQAR plateau in
            200-400 steps this way (700-900 with every row a subset row); with LM rows mixed in from the start (or
            at lr 1e-3) it had not after 1100. 1200 leave the subset rows a few hundred steps after the transition
            (700 did not: the transition came at 600-700); 2000 did not make seed 0 more robust (notes).
        mix_steps: second phase, LM text and recall rows (``lm_share`` of the rows are text): the teacher becomes
            a language model that keeps its recall.
        lm_share: share of the text rows in the second phase.
        batch_size: rows per step.
        lr: peak learning rate (AdamW, warm-up, constant, cosine decay over the last ``decay_fraction``); None =
            width-scaled ``3e-3 * sqrt(32 / d_model)`` (`teacher_lr`): 3e-3 at width 32, where the tiny teacher
            learned; 1.06e-3 at 256, where 3e-3 made the recall loss rise (3.47 -> 4.5 after step 100) and 1e-3
            learned the retrofit-tiny levels in 1000 steps (H100, ``benchmarks/results/fidelity_v2_gpu_small.md``).
        warmup_levels: a named level set trained first, recall rows only, for ``warmup_levels_steps`` steps and
            never scored (None = none): short, easy levels where the retrieval circuit forms quickly, before the
            scored levels. At width 256 a teacher on ``retrofit-small`` alone (T 512, 32-120 pairs) stayed at
            chance for 1600-2800 steps at lr 3e-4/1e-3/3e-3, while ``retrofit-tiny`` (T 128, 4-32 pairs) was
            learned within 1000 (same file). Not yet measured as a warm-up.
        warmup_levels_steps: steps of the warm-up phase (0 with no ``warmup_levels``).
        warmup: warm-up steps.
        decay_fraction: share of all steps that decay.
        weight_decay: AdamW decay on matrices.
        curriculum: share of the recall phase over which the harder levels are admitted, easiest first.
        subset_rows: share of the rows whose forward keeps only a random subset of the attention layers (k of
            the L layers, k uniform in 1..L, the others' outputs zeroed), in both phases. Without it the teacher put
            MQAR retrieval in layer 0 alone (zeroing it: 0.03; any other layer: 1.0), a layer every uniform hybrid
            replaces, so every gla hybrid scored alike after stage 2; with it no single layer is needed and a
            layout's kept attention layers keep part of the retrieval (notes, teacher E).
        prev_token: add a learned previous-token embedding (as the recall probe): the teacher's retrieval needs
            one attention layer per lookup instead of two; every student inherits it.
        zero_init: residual output projections that start at zero (``probe.build.zero_residual_outputs``).
        init_std: Linear/Embedding init std; None = width-scaled ``0.02 * sqrt(1024 / d_model)``.
        solved_at: held-out accuracy every level must reach; a teacher below it fails with a message naming the
            level, or the next seed is tried (``retries``). 0 turns the checks off (smoke runs and tests).
        robust_at: after the levels, the teacher must keep this share of its mean level accuracy with any one
            attention layer's output zeroed (`teacher.single_layer_drops`), else the next seed is tried (as an
            unsolved level; 0 turns it off, as does ``solved_at`` 0). A teacher whose retrieval sits in one layer
            makes every layout that replaces that layer alike. Measured at tiny (notes, 2026-12-06 evening): seeds
            0, 1 and 2 of this recipe all solved every level (0.97-1.00) but kept 0.23, 0.73 and 1.00 of it without
            layer 0 (their worst layer); students (stage 2 100 steps, data seed 0) of seed 1 scored gla-3:1 0.44
            and gdn-3:1 0.45, of seed 2 0.999 and 1.000. Hence 0.9: with retries 2 the default teacher is seed 2.
        retries: further teacher seeds tried (``seed + 1, ...``) when one does not solve every level.
        unsolved: what a level below ``solved_at`` after every seed does: ``fail`` (a one-line ConfigError naming
            the level, its score and what to raise) or ``drop`` (the level is left out of every student's scores,
            said in the log and recorded as ``dropped`` in the teacher's cache entry and each result; a teacher
            that solves no level still fails). A student is never scored on a level its teacher did not solve.
        eval_examples: held-out examples per level for the solved-check.
        check_every: log every level's accuracy on 64 held-out examples every this many steps (0 = never).
        seed: the teacher's seed (its initialisation and data order): a recorded choice of the study.
    """

    recall_steps: int = 1200
    mix_steps: int = 400
    lm_share: float = 0.5
    batch_size: int = 32
    lr: float | None = None
    warmup_levels: str | None = None
    warmup_levels_steps: int = 0
    warmup: int = 50
    decay_fraction: float = 0.2
    weight_decay: float = 0.0
    curriculum: float = 0.5
    subset_rows: float = 1.0
    prev_token: bool = True
    zero_init: str = field(default="all", metadata={"choices": ("none", "linear", "all")})
    init_std: float | None = None
    solved_at: float = 0.9
    robust_at: float = 0.9
    retries: int = 2
    unsolved: str = field(default="fail", metadata={"choices": ("fail", "drop")})
    eval_examples: int = 256
    check_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        w = "retrofit.teacher"
        if self.recall_steps < 1 or self.mix_steps < 0 or self.batch_size < 2 or self.eval_examples < 1:
            raise ConfigError(f"{w}: recall_steps >= 1, mix_steps >= 0, batch_size >= 2 and eval_examples >= 1 "
                              f"are required (got {self.recall_steps}, {self.mix_steps}, {self.batch_size}, "
                              f"{self.eval_examples})")
        if self.lr is not None:
            _positive(w, lr=self.lr)
        if (self.warmup_levels is None) != (self.warmup_levels_steps == 0) or self.warmup_levels_steps < 0:
            raise ConfigError(f"{w}: warmup_levels and warmup_levels_steps > 0 go together (got "
                              f"{self.warmup_levels!r}, {self.warmup_levels_steps})")
        if not 0.0 <= self.subset_rows <= 1.0 or not 0.0 <= self.robust_at <= 1.0:
            raise ConfigError(f"{w}: subset_rows {self.subset_rows} and robust_at {self.robust_at} must be in [0, 1]")
        if not 0.0 <= self.lm_share < 1.0 or not 0.0 <= self.curriculum <= 1.0 or not 0.0 <= self.solved_at <= 1.0:
            raise ConfigError(f"{w}: lm_share in [0, 1), curriculum in [0, 1] and solved_at in [0, 1] are required "
                              f"(got {self.lm_share}, {self.curriculum}, {self.solved_at})")
        if self.retries < 0 or self.warmup < 0 or self.weight_decay < 0 or self.check_every < 0:
            raise ConfigError(f"{w}: retries, warmup, weight_decay and check_every must be >= 0")

    @property
    def steps(self) -> int:
        """Optimizer steps of all phases (warm-up levels, recall, mix)."""
        return self.warmup_levels_steps + self.recall_steps + self.mix_steps

    def peak_lr(self, d_model: int) -> float:
        """``lr``, or the width-scaled default ``3e-3 * sqrt(32 / d_model)`` when it is None."""
        return self.lr if self.lr is not None else 3e-3 * (32 / d_model) ** 0.5


@dataclass(frozen=True, kw_only=True)
class TransferConfig:
    """Stage 1, attention transfer (`hyla.proxy_train.retrofit.transfer`): every layer's mixer of one kind learns
    to reproduce the teacher layer's attention output on the teacher's own inputs, all layers at once, once per
    (teacher, kind, options).

    Attributes:
        steps: optimizer steps (each on one batch of fresh teacher activations).
        batch_size: rows per step (recall rows and text rows, ``lm_share`` of them text).
        lm_share: share of text rows.
        lr: peak learning rate of the mixers (AdamW, warm-up 10 %, cosine over the last 30 %).
        start: how a mapped mixer starts (``mapping.STARTS``).
    """

    steps: int = 300
    batch_size: int = 16
    lm_share: float = 0.5
    lr: float = 3e-3
    start: str = field(default="neutral", metadata={"choices": ("neutral", "default")})

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"retrofit.transfer: steps >= 0 and batch_size >= 1 are required (got {self.steps}, "
                              f"{self.batch_size})")
        _positive("retrofit.transfer", lr=self.lr)
        if not 0.0 <= self.lm_share <= 1.0:
            raise ConfigError(f"retrofit.transfer.lm_share: {self.lm_share} must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Stage 2, end to end per layout (`hyla.proxy_train.retrofit.distill`): KL to the teacher's logits on every
    scored position plus the task loss on the recall answers. Seeds vary the data order only.

    Attributes:
        steps: optimizer steps at budget 1 (a search rung multiplies them).
        batch_size: rows per step.
        lm_share: share of text rows (KL only; recall rows take KL + task loss on their answers).
        lr: peak learning rate (AdamW, short warm-up, cosine over the last half).
        kl_weight: weight of the KL term.
        task_weight: weight of the answers' cross-entropy.
        temperature: softmax temperature of the KL (the loss is scaled by T^2).
        train: which parameters train: ``all`` or ``mixers`` (the linear mixers only; the rest stays the teacher's).
        stand_in: how a replaced layer starts: ``silent`` (its kind's stage-1 mixer with the output-norm weight
            set to 0: the stage-1 features, no output yet; the student starts as the teacher without the replaced
            layers), ``trained`` (the stage-1 mixer as trained) or ``mapped`` (the mapping alone at its neutral
            start, no stage 1). Measured at tiny (notes): ``trained`` drowned the kept attention layers' retrieval
            (gla-3:1 0.42 on 2 pairs after stage 2, vs 0.91 silent), ``mapped`` left the linear layers idle (pure
            gla 0.10 vs 0.26 silent).
    """

    steps: int = 100
    batch_size: int = 16
    lm_share: float = 0.5
    lr: float = 1e-3
    kl_weight: float = 1.0
    task_weight: float = 1.0
    temperature: float = 1.0
    train: str = field(default="all", metadata={"choices": ("all", "mixers")})
    stand_in: str = field(default="silent", metadata={"choices": ("silent", "trained", "mapped")})

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError(f"retrofit.distill: steps >= 0 and batch_size >= 1 are required (got {self.steps}, "
                              f"{self.batch_size})")
        _positive("retrofit.distill", lr=self.lr, temperature=self.temperature)
        if self.kl_weight < 0 or self.task_weight < 0 or self.kl_weight + self.task_weight == 0:
            raise ConfigError("retrofit.distill: kl_weight and task_weight must be >= 0, not both 0")
        if not 0.0 <= self.lm_share < 1.0:
            raise ConfigError(f"retrofit.distill.lm_share: {self.lm_share} must be in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RetrofitConfig:
    """The whole retrofit recipe.

    Attributes:
        levels: the graded level set every model trains and is scored on (``hyla.proxy_train.tasks.levels``:
            ``retrofit-tiny``, ``retrofit-mini``, ``retrofit-small``).
        seq_len: row length of training batches; shorter levels are right-padded (no loss there). None = the
            level set's longest level.
        text: the LM text (byte tokenizer) of the teacher's second phase, stage 1, stage 2 and the LM scores.
        teacher, transfer, distill: the three parts (their docstrings).
        pool_rows: training examples generated per level (every stage draws its rows from them).
        eval_examples: held-out examples per level for a layout's scores.
        eval_text_rows: held-out text rows for the LM loss and the KL to the teacher.
        cache_dir: where the teacher and stage 1 are cached (None: ``$HYLA_CACHE_DIR``, else ``~/.cache/hyla``).
        device: ``auto`` (CUDA if present), ``cpu`` or ``cuda``.
        kernels: the linear mixers' implementation on CUDA (``mixers.common.KERNELS``); ``torch`` avoids Triton
            compilation, which dominates runs of tiny models.
    """

    levels: str = "retrofit-tiny"
    seq_len: int | None = None
    text: TextConfig = field(default_factory=TextConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    pool_rows: int = 4096
    eval_examples: int = 256
    eval_text_rows: int = 32
    cache_dir: str | None = None
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda")})
    kernels: str = field(default="torch", metadata={"choices": ("auto", "fla", "torch", "cores")})

    def __post_init__(self) -> None:
        if (self.seq_len is not None and self.seq_len < 2) or min(self.pool_rows, self.eval_examples, self.eval_text_rows) < 1:
            raise ConfigError(f"retrofit: seq_len >= 2 and pool_rows, eval_examples, eval_text_rows >= 1 are "
                              f"required (got {self.seq_len}, {self.pool_rows}, {self.eval_examples}, "
                              f"{self.eval_text_rows})")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, where: str = "retrofit") -> RetrofitConfig:
        """Parse a mapping strictly (unknown keys refused, nested parts parsed)."""
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
