"""The supernet's recipe: how it trains (`SupernetTrain`, part of its cache key) and how it scores (`SupernetScore`);
`SupernetRecall` is the ``recall: {family: supernet, ...}`` mapping of a proxy config (torch-free, as every config).

Defaults follow PostNAS (Jet-Nemotron, arXiv 2508.15884; ``/work/shared/REFERENCE.md``): the teacher's attention,
MLPs, embeddings and norms stay frozen and only the linear branches (and head-wise norms, bound tables) train; each
step samples sub-networks and distils them to the teacher's logits, plus the recall answers' cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hyla.config import ConfigError
from hyla.proxy_train.retrofit.config import RetrofitConfig
from hyla.space.search_space import SearchSpace

#: how the linear branches start (`hyla.proxy_train.supernet.init`)
INITS = ("transfer", "mapped", "fresh")


@dataclass(frozen=True, kw_only=True)
class SupernetTrain:
    """How the supernet trains (every field enters its cache key).

    Attributes:
        steps: optimizer steps (0: the branches stay as `init` made them; scoring then measures the init alone).
        batch_size: rows per step, split evenly over the step's layouts.
        layouts_per_step: layouts sampled per step (each runs on its share of the rows; PostNAS samples one).
        lm_share: share of text rows (the rest are recall rows of the level set).
        lr: peak learning rate (AdamW, warm-up, constant, cosine over the last ``decay_fraction``).
        warmup: warm-up steps.
        decay_fraction: share of the steps that decay (to 10 % of ``lr``).
        weight_decay: AdamW decay of matrices.
        grad_clip: global gradient-norm clip.
        kl_weight: weight of the KL to the teacher's logits (every position up to a row's last answer).
        task_weight: weight of the recall answers' cross-entropy.
        feature_weight: weight of the per-layer feature loss (each block's output vs the teacher's, relative MSE).
        temperature: softmax temperature of the KL (the term is scaled by its square).
        train_base: also train the teacher's attention, MLPs, embeddings and norms (PostNAS freezes them).
        init: how the linear branches start (`INITS`): ``transfer`` (issue 31's stage-1 attention transfer, cached
            per teacher and kind), ``mapped`` (attention weights mapped into each kind, neutral output), ``fresh``.
        seed: layout sampling, row order and ``fresh`` initialisation.
    """

    steps: int = 300
    batch_size: int = 16
    layouts_per_step: int = 4
    lm_share: float = 0.5
    lr: float = 1e-3
    warmup: int = 20
    decay_fraction: float = 0.3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1.0
    task_weight: float = 1.0
    feature_weight: float = 0.0
    temperature: float = 1.0
    train_base: bool = False
    init: str = field(default="transfer", metadata={"choices": INITS})
    seed: int = 0

    def __post_init__(self) -> None:
        w = "supernet.train"
        if self.steps < 0 or self.batch_size < 1 or self.layouts_per_step < 1 or self.warmup < 0:
            raise ConfigError(f"{w}: steps >= 0, batch_size >= 1, layouts_per_step >= 1 and warmup >= 0 are required "
                              f"(got {self.steps}, {self.batch_size}, {self.layouts_per_step}, {self.warmup})")
        if self.layouts_per_step > self.batch_size:
            raise ConfigError(f"{w}.layouts_per_step: {self.layouts_per_step} exceeds batch_size {self.batch_size} "
                              "(every layout needs a row)")
        if not 0.0 <= self.lm_share <= 1.0 or not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"{w}: lm_share and decay_fraction must be in [0, 1] (got {self.lm_share}, "
                              f"{self.decay_fraction})")
        if not self.lr > 0 or not self.temperature > 0 or not self.grad_clip > 0:
            raise ConfigError(f"{w}: lr, temperature and grad_clip must be > 0")
        weights = (self.kl_weight, self.task_weight, self.feature_weight)
        if min(weights) < 0 or sum(weights) == 0 or self.weight_decay < 0:
            raise ConfigError(f"{w}: kl_weight, task_weight, feature_weight must be >= 0 and not all 0; "
                              "weight_decay >= 0")


@dataclass(frozen=True, kw_only=True)
class SupernetScore:
    """How layouts are scored by inheritance (not part of the cache key).

    Attributes:
        eval_examples: held-out examples per recall level.
        eval_text_rows: held-out text rows (LM loss and KL to the teacher).
        chunk: layouts per routed pass (memory grows with the distinct prefixes of a chunk).
        finetune_steps: optional short fine-tune of each layout's inherited weights before scoring (0: none; the
            layouts of a chunk then cannot share a pass and are scored one by one).
        finetune_lr: its learning rate (constant, AdamW, the supernet's loss on fresh rows).
        bf16: score under bf16 autocast on CUDA (the scores themselves in fp32; CPU always fp32).
    """

    eval_examples: int = 64
    eval_text_rows: int = 16
    chunk: int = 32
    finetune_steps: int = 0
    finetune_lr: float = 3e-4
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.eval_examples < 1 or self.eval_text_rows < 1 or self.chunk < 1 or self.finetune_steps < 0:
            raise ConfigError(f"supernet.score: eval_examples, eval_text_rows and chunk >= 1, finetune_steps >= 0 "
                              f"are required (got {self.eval_examples}, {self.eval_text_rows}, {self.chunk}, "
                              f"{self.finetune_steps})")
        if not self.finetune_lr > 0:
            raise ConfigError(f"supernet.score.finetune_lr: {self.finetune_lr} must be > 0")


@dataclass(frozen=True, kw_only=True)
class SupernetRecall:
    """``recall: {family: supernet, ...}``.

    Attributes:
        retrofit: the teacher, its level set and text, stage 1, device and cache (issue 31's `RetrofitConfig`;
            its ``distill`` part is not used).
        train: how the supernet trains (`SupernetTrain`).
        score: how a layout is scored (`SupernetScore`).
        space: the search space the supernet covers; a study sets it to its own space (None: the layout's own
            kinds, free placement, no head-wise heads).
        batch: trials per worker call in a search (many layouts share one routed pass).
    """

    retrofit: RetrofitConfig = field(default_factory=RetrofitConfig)
    train: SupernetTrain = field(default_factory=SupernetTrain)
    score: SupernetScore = field(default_factory=SupernetScore)
    space: SearchSpace | None = None
    batch: int = 256

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"recall.batch: {self.batch} must be >= 1")
