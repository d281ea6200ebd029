"""The recall probe: MQAR trained on its own, over a difficulty sweep, scored as the area under accuracy vs pairs.

Why a probe apart from the LM proxy (Zoology, Arora et al. 2023; MAD, Poli et al. 2024): learning MQAR is a phase
transition (an induction circuit forms after a plateau) whose timing depends on seed, depth and learning rate
more than on the architecture, so a recall score taken from a short LM run with a few recall rows mixed in
measures luck as much as the layout (the runs that showed it: docs/recall-probe.md). The probe removes the parts
of that outcome that are not the architecture's, with the levers the field uses:

- **Recall alone** (Zoology, MAD): the layout is trained on MQAR only, with a loss on the answers only.
- **The same previous-token help for every layout** (``prev_token``): a learned embedding of the previous token
  is added to the token embedding, the part of the induction circuit a short convolution gives DeltaNet/GDN for
  free. A single attention layer (or a linear state) then only has to store and look up ``key -> value``, which
  is what the score should measure. It is a probe-only module: the layout, its parameters and its memory are
  unchanged.
- **A difficulty sweep** (Zoology): levels with more pairs at one length; the score is the mean accuracy over
  the levels, i.e. the normalised area under the accuracy-vs-pairs curve. Attention stays near 1 at every
  level, a fixed-size state falls off as the pairs outgrow it, so pure linear mixers are graded by capacity
  rather than "solved or not yet".
- **A curriculum** (``curriculum``): training starts on the easiest level and admits harder ones over the first
  part of the steps, so the easy levels form the circuit early and reliably.
- **Best of a few learning rates** (MAD, Zoology; ``lrs``): each LR trains from the same initialisation, the
  best score counts.
- **Long enough for the transition**, with early stopping once every level is solved (``stop_at``).

The model is the layout's own pattern of mixers and attention placement at its depth, optionally narrowed to
``width`` (a narrower model is faster and its fixed-size states fill at fewer pairs), so placement stays part of
what is scored. The narrowed mixers take the width's default heads, whose states keep the ratios they have at
340M (GLA, GDN, HGRN-2 and DeltaNet equal, RetNet 4x: `hyla.space.mixer_kinds`), so no kind gains memory by the
narrowing.

The package, in the order a probe runs: this module (`RecallProbeConfig`: every knob, torch-free), `levels` (the
MQAR levels, the shared pool of rows and each probe's row schedule), `build` (the probe model: the narrowed
layout, previous-token help, zero-initialised outputs), `replicas` (R copies of a model trained as one),
`stack` (the probes of one layout in flight: step, checks, early stop, scores) and `runner` (`run_probes`,
`run_probe_seeds`: many stacks side by side on one device).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hyla.config import ConfigError
from hyla.proxy_train.model.mixers.registry import KERNELS


@dataclass(frozen=True, kw_only=True)
class RecallProbeConfig:
    """How the recall probe trains and scores (module docstring).

    Attributes:
        seq_len: MQAR length T of every level.
        pairs: key-value pairs of the levels (the difficulty sweep), easiest first.
        task_vocab: MQAR symbols (keys: lower half, values: upper half); None = 4 x the largest ``pairs``.
        steps: optimizer steps per learning rate.
        batch_size: MQAR rows per step.
        lrs: peak learning rates tried; the best score counts.
        warmup: linear warm-up steps.
        decay_fraction: share of the last steps with a cosine decay to ``min_lr_ratio`` (warmup-stable-decay,
            `hyla.proxy_train.train.schedule.wsd_lr`).
        min_lr_ratio: the cosine's floor as a fraction of each lr.
        weight_decay: AdamW decay on matrices.
        betas: AdamW betas of the probe's optimizer (`replicas.ReplicaStack.clip_and_step`). The probe's own
            value, not the LM runs' `TrainConfig.betas` (0.9, 0.95): a faster-forgetting second moment.
        grad_clip: each probe's global grad-norm clip (its own norm, per replica).
        prev_token: add a learned previous-token embedding (the same help for every layout).
        zero_init: residual output projections that start at zero (`zero_residual_outputs`): ``none``,
            ``linear`` (the purely linear layers' mixers: a hybrid starts as its attention layers alone) or ``all``.
        curriculum: share of the steps over which harder levels are admitted (0 = all levels from the start).
        eval_examples: held-out examples per level for the final score.
        eval_every: check the levels every this many steps and stop when all reach ``stop_at`` (0 = never).
        stop_at: early-stopping accuracy (Zoology stops at 0.99).
        kernels: linear-mixer implementation on CUDA (`hyla.proxy_train.model.mixers.registry.KERNELS`): ``torch`` (our forward and
            PyTorch scans: no Triton compilation, tens of thousands of small kernels per stacked step),
            ``cores`` (our forward, fla's scan kernels with the replica axis folded into the batch:
            ``mixers.scans``), or ``fla``/``auto`` (fla's layers; no stacking). ``torch`` and ``cores`` stack.
        cuda_graph: on CUDA with ``kernels: torch`` or ``cores``, capture the training step (batch gather, lr, forward,
            backward, clipping, AdamW) in one CUDA graph after 3 eager warm-up steps; replays remove the
            per-kernel launch cost. Falls back to eager steps if capture fails.
        compile: on CUDA with ``kernels: torch`` or ``cores``, train through ``torch.compile`` of each distinct block
            (``replicas.ReplicaStack(compile_blocks=True)``: one compile per layer spec and process, reused by every
            layout that has the spec; Inductor fuses the scans' elementwise work). Checks and scores stay eager.
        width: train the layout's pattern at this d_model (`probe_layout`: mixers, attention placement and
            head shares kept, depth kept); None = the layout's own width.
        heads: the probe model's ``num_heads`` at ``width`` (None = the layout's, narrowed). Fewer, wider
            attention heads (e.g. 1 x 64) give one attention layer more room to tell the task's symbols apart.
        concurrent: probes trained side by side on one CUDA device (`runner.run_probes`: the
            seeds and lrs of one layout as one stacked model, each stack on its own stream); 0 = all probes of a
            call. CPU runs one stack after another.
        pool_rows: training examples generated per level (shared by the probes of a call; each draws its own rows).
        pool_seed: seed of those examples and of the held-out examples (the same exam for every layout and seed).
        scan_chunk: chunk length of the PyTorch scans (`hyla.proxy_train.model.mixers.common.scan_chunk`); None = each scan's
            default. Longer chunks: fewer, larger kernels, more memory per probe.
        bf16: on CUDA, bf16 autocast; false = fp32 with TF32 matmuls (no casts: fewer kernels per step).
    """

    seq_len: int = 256
    pairs: tuple[int, ...] = (4, 8, 16, 32, 64)
    task_vocab: int | None = None
    steps: int = 1000
    batch_size: int = 64
    lrs: tuple[float, ...] = (1e-3,)
    warmup: int = 50
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    prev_token: bool = True
    zero_init: str = field(default="none", metadata={"choices": ("none", "linear", "all")})
    curriculum: float = 0.25
    eval_examples: int = 256
    eval_every: int = 100
    stop_at: float = 0.99
    kernels: str = field(default="torch", metadata={"choices": KERNELS})
    cuda_graph: bool = True
    compile: bool = True
    width: int | None = None
    heads: int | None = None
    concurrent: int = 16
    pool_rows: int = 16384
    pool_seed: int = 0
    scan_chunk: int | None = None
    bf16: bool = True

    def __post_init__(self) -> None:
        w = "recall"
        for name in ("seq_len", "steps", "batch_size", "eval_examples", "pool_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{w}.{name}: {getattr(self, name)} must be >= 1")
        if not self.pairs or sorted(set(self.pairs)) != list(self.pairs) or self.pairs[0] < 1:
            raise ConfigError(f"{w}.pairs: {list(self.pairs)} must be distinct positive counts, easiest first")
        if self.seq_len % 2 or self.seq_len < 4 * self.pairs[-1]:
            raise ConfigError(f"{w}.seq_len: {self.seq_len} must be even and >= 4 x the largest pairs "
                              f"({4 * self.pairs[-1]})")
        if not self.lrs or not all(lr > 0 for lr in self.lrs):
            raise ConfigError(f"{w}.lrs: {list(self.lrs)} must be one or more positive learning rates")
        if self.task_vocab is not None and self.task_vocab < 2 * self.pairs[-1]:
            raise ConfigError(f"{w}.task_vocab: {self.task_vocab} must be >= 2 x the largest pairs "
                              f"({2 * self.pairs[-1]}) or null")
        if not 0.0 < self.decay_fraction <= 1.0 or not 0.0 <= self.curriculum <= 1.0:
            raise ConfigError(f"{w}.decay_fraction/curriculum: {self.decay_fraction}/{self.curriculum} must be in "
                              "(0, 1] / [0, 1]")
        if self.warmup < 0 or self.eval_every < 0 or self.weight_decay < 0 or self.concurrent < 0:
            raise ConfigError(f"{w}.warmup/eval_every/weight_decay/concurrent: must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{w}.min_lr_ratio: {self.min_lr_ratio} must be in [0, 1]")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{w}.betas: {list(self.betas)} must be two numbers in [0, 1)")
        if not self.grad_clip > 0:
            raise ConfigError(f"{w}.grad_clip: {self.grad_clip} must be > 0")
        if self.scan_chunk is not None and self.scan_chunk < 1:
            raise ConfigError(f"{w}.scan_chunk: {self.scan_chunk} must be >= 1 or null")
        if self.width is not None and self.width < 8:
            raise ConfigError(f"{w}.width: {self.width} must be >= 8 or null (the layout's own width)")
        if self.heads is not None and self.heads < 1:
            raise ConfigError(f"{w}.heads: {self.heads} must be >= 1 or null (the layout's own heads)")
        if not 0.0 < self.stop_at <= 1.0:
            raise ConfigError(f"{w}.stop_at: {self.stop_at} must be in (0, 1]")

    @property
    def symbols(self) -> int:
        """MQAR symbols used by every level."""
        return self.task_vocab if self.task_vocab is not None else 4 * self.pairs[-1]

    def check_vocab(self, vocab_size: int) -> None:
        """ConfigError unless the levels' symbols fit a layout's vocab (before any work)."""
        if self.symbols > vocab_size:
            raise ConfigError(f"recall.task_vocab: {self.symbols} symbols exceed the layout's vocab_size "
                              f"{vocab_size}; lower task_vocab or the largest pairs")
