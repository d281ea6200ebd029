"""The recall suite: named task levels, named sets of levels, a training mix and held-out evaluation.

A level is one task at one length and parameter set, keyed like ``mqar@128x8`` (MQAR: T x pairs),
``hop2@64x4`` (multi-hop: hops, T x chains) or ``icr@128`` / ``ruler_single@256`` (others: T). ``RecallSuite.evaluate`` returns the accuracy of every level and
``"recall"``, the suite score: levels are averaged within each task first, then tasks are averaged, so a task with
three MQAR levels weighs as much as one with a single level (MAD averages over difficulty levels the same way).

Accuracy of a level: per example the share of scored targets predicted by the argmax of the logits (RULER
tasks: the share of answers whose every token is right), then the mean over examples (`tasks.common.level_accuracy`,
the one recall scorer of proxies and full runs).

Training and evaluation never share a generator seed: training seeds are even, evaluation seeds odd.

Symbols of the synthetic tasks sit at the top of the model vocab. When a tokenizer is given and the room above
its ids (``vocab_size - tokenizer.vocab_size``) is smaller than a task's default ``task_vocab`` but at least 16,
the task uses exactly that room; with no room (e.g. a 32k tokenizer and a 32k model vocab) the symbols are the
tokenizer's last ids, which text rarely uses. RULER levels are text and use the tokenizer's own ids.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hyla.config import ConfigError, from_mapping
from hyla.proxy_train.tasks.common import IGNORE, level_accuracy, position_accuracy
from hyla.proxy_train.tasks.mad import FuzzyRecall, InContextRecall, Memorization, NoisyRecall, SelectiveCopying
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.proxy_train.tasks.multihop import MultiHop
from hyla.proxy_train.tasks.ruler import NeedleTask, VariableTracking

#: task name -> (generator class, fixed constructor arguments); RULER tasks are text tasks (need a tokenizer).
TASKS: dict[str, tuple[type, dict[str, Any]]] = {
    "mqar": (MQAR, {}),
    "hop": (MultiHop, {}),
    "icr": (InContextRecall, {}),
    "noisy_recall": (NoisyRecall, {}),
    "fuzzy_recall": (FuzzyRecall, {}),
    "selective_copy": (SelectiveCopying, {}),
    "memorization": (Memorization, {}),
    "ruler_single": (NeedleTask, {"kind": "single"}),
    "ruler_multikey": (NeedleTask, {"kind": "multikey"}),
    "ruler_multivalue": (NeedleTask, {"kind": "multivalue"}),
    "ruler_multiquery": (NeedleTask, {"kind": "multiquery"}),
    "ruler_vt": (VariableTracking, {}),
}
_FIXED = {"vocab_size", "seq_len", "tokenizer", "haystack_docs", "kind"}


@dataclass(frozen=True)
class RecallTaskSpec:
    """One level: a task name from ``TASKS``, its length and extra generator parameters."""

    task: str = field(metadata={"choices": tuple(TASKS)})
    seq_len: int
    params: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"recall task: {self.task!r} is not allowed; expected one of {', '.join(TASKS)}")
        if self.seq_len < 2:
            raise ConfigError(f"recall task {self.task}.seq_len: {self.seq_len!r} must be >= 2")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "recall_task") -> RecallTaskSpec:
        """Parse ``{"task": ..., "seq_len": ..., "params": {...}}`` strictly."""
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "seq_len": self.seq_len, "params": dict(self.params)}

    def build(self, vocab_size: int, tokenizer: Any = None, haystack_docs: Sequence[str] = ()) -> Any:
        """The generator of this level (validated; bad parameters raise ``ConfigError``)."""
        cls, fixed = TASKS[self.task]
        allowed = set(cls.__dataclass_fields__) - _FIXED
        for key in self.params:
            if key not in allowed:
                raise ConfigError(f"recall task {self.task}.params: unknown parameter {key!r}; "
                                  f"allowed: {', '.join(sorted(allowed))}")
        if cls in (NeedleTask, VariableTracking):
            if tokenizer is None:
                raise ConfigError(f"recall task {self.task}: a text task needs a tokenizer")
            if tokenizer.vocab_size > vocab_size:
                raise ConfigError(f"recall task {self.task}: tokenizer vocab {tokenizer.vocab_size} exceeds the "
                                  f"model vocab_size {vocab_size}")
            return cls(tokenizer=tokenizer, haystack_docs=tuple(haystack_docs), seq_len=self.seq_len,
                       **fixed, **self.params)
        params = dict(self.params)
        free = vocab_size - (tokenizer.vocab_size if tokenizer is not None else 0)
        default_tv = cls.__dataclass_fields__["task_vocab"].default
        if "task_vocab" not in params and tokenizer is not None and 16 <= free < default_tv:
            params["task_vocab"] = free  # stay above the text tokens when the default range would overlap
        return cls(vocab_size=vocab_size, seq_len=self.seq_len, **fixed, **params)


def _spec(task: str, seq_len: int, **params: Any) -> RecallTaskSpec:
    return RecallTaskSpec(task, seq_len, params)


#: Named sets of levels (a proxy's ``recall: {family: suite, levels: NAME}``): ``tiny`` is cheap on CPU (T <= 256),
#: ``small`` is the GPU proxy suite (T 128-1024). MQAR runs from an easy level (few pairs) to a hard one (more pairs
#: than a small linear state holds), so the mean over its levels moves as soon as the induction circuit forms
#: instead of sitting at chance until the hardest level is solved. MQAR levels use the fewest symbols their pairs
#: allow (at least 32): every symbol's embedding must be seen often within a proxy budget (docs/proxy-recipe.md).
SUITE_LEVELS: dict[str, tuple[RecallTaskSpec, ...]] = {
    "tiny": (
        _spec("mqar", 32, num_kv_pairs=4, task_vocab=32), _spec("mqar", 64, num_kv_pairs=8, task_vocab=32),
        _spec("mqar", 64, num_kv_pairs=16, task_vocab=32),
        _spec("icr", 64), _spec("selective_copy", 64, num_tokens=8),  # 64: trainable in the tiny proxy (T=64)
        _spec("ruler_single", 128, template="short"), _spec("ruler_single", 256, template="short"),
    ),
    "small": (
        _spec("mqar", 128, num_kv_pairs=8, task_vocab=32), _spec("mqar", 256, num_kv_pairs=16, task_vocab=32),
        _spec("mqar", 512, num_kv_pairs=32, task_vocab=64), _spec("mqar", 1024, num_kv_pairs=64, task_vocab=128),
        _spec("icr", 256), _spec("noisy_recall", 256), _spec("fuzzy_recall", 256),
        _spec("selective_copy", 256, num_tokens=16),
        _spec("ruler_single", 512), _spec("ruler_single", 1024), _spec("ruler_multikey", 1024),
        _spec("ruler_multivalue", 1024), _spec("ruler_multiquery", 1024), _spec("ruler_vt", 1024),
    ),
}


def _seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x3FFFFFFF


class RecallSuite:
    """A set of recall levels with a training mix and an evaluation (module docstring)."""

    def __init__(self, specs: Sequence[RecallTaskSpec], generators: Sequence[Any], train_seq_len: int,
                 pad_id: int = 0) -> None:
        if not specs:
            raise ConfigError("recall suite: no task levels")
        self.specs = tuple(specs)
        self.generators = tuple(generators)
        self.levels = tuple(g.level for g in self.generators)
        if len(set(self.levels)) != len(self.levels):
            raise ConfigError(f"recall suite: duplicate levels in {', '.join(self.levels)}")
        self.train_seq_len = int(train_seq_len)
        self.pad_id = int(pad_id)
        # Levels longer than the training length are evaluation-only (length generalisation).
        self.train_indices = [i for i, s in enumerate(self.specs) if s.seq_len <= self.train_seq_len]
        if not self.train_indices:
            raise ConfigError(f"recall suite: train_seq_len {self.train_seq_len} is shorter than every level "
                              f"({', '.join(self.levels)})")
        self._eval_cache: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_specs(cls, specs: Sequence[RecallTaskSpec | Mapping[str, Any]], vocab_size: int, tokenizer: Any = None,
                   haystack_docs: Sequence[str] = (), seq_len_cap: int | None = None,
                   train_seq_len: int | None = None) -> RecallSuite:
        """Build a suite from specs (or their dicts).

        Args:
            specs: the levels.
            vocab_size: model vocabulary; synthetic symbols use its top ids.
            tokenizer: LM tokenizer (needed by RULER tasks; also keeps synthetic symbols above its ids).
            haystack_docs: real text for RULER haystacks (e.g. validation documents).
            seq_len_cap: levels longer than this are dropped.
            train_seq_len: row length of ``train_batch`` (default: the cap, else the longest level).
        """
        parsed = [s if isinstance(s, RecallTaskSpec) else RecallTaskSpec.from_dict(s, f"recall_tasks[{i}]")
                  for i, s in enumerate(specs)]
        if seq_len_cap is not None:
            parsed = [s for s in parsed if s.seq_len <= seq_len_cap]
            if not parsed:
                raise ConfigError(f"recall suite: seq_len_cap {seq_len_cap} drops every level")
        gens = [s.build(vocab_size, tokenizer, haystack_docs) for s in parsed]
        for s, g in zip(parsed, gens):
            if getattr(g, "vocab_size", vocab_size) > vocab_size:
                raise ConfigError(f"recall task {s.task}: ids up to {g.vocab_size} exceed vocab_size {vocab_size}")
        train_len = train_seq_len or seq_len_cap or max(s.seq_len for s in parsed)
        pad = getattr(tokenizer, "pad_id", 0) if tokenizer is not None else 0
        return cls(parsed, gens, train_len, pad if pad < vocab_size else 0)

    @classmethod
    def named(cls, name: str, vocab_size: int, tokenizer: Any = None, haystack_docs: Sequence[str] = (),
              seq_len_cap: int | None = None, train_seq_len: int | None = None) -> RecallSuite:
        """A named set of levels: ``tiny`` (CPU) or ``small`` (GPU); see `SUITE_LEVELS`."""
        if name not in SUITE_LEVELS:
            raise ConfigError(f"recall.levels: {name!r} is not allowed; expected one of {', '.join(SUITE_LEVELS)}")
        return cls.from_specs(SUITE_LEVELS[name], vocab_size, tokenizer, haystack_docs, seq_len_cap, train_seq_len)

    def train_batch(self, batch_size: int, step: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch ``(batch_size, train_seq_len)``: each row one example of a uniformly drawn level.

        Rows shorter than ``train_seq_len`` are right-padded (inputs ``pad_id``, targets -100); levels longer
        than ``train_seq_len`` are never trained on (evaluation-only: length generalisation). The same
        ``(step, seed)`` always gives the same batch.
        """
        if batch_size < 1:
            raise ConfigError(f"recall batch_size: {batch_size!r} must be >= 1")
        rng = np.random.default_rng([seed & 0xFFFFFFFF, step & 0xFFFFFFFF, 0x7EC])
        picks = rng.choice(self.train_indices, size=batch_size)
        inputs = torch.full((batch_size, self.train_seq_len), self.pad_id, dtype=torch.long)
        targets = torch.full((batch_size, self.train_seq_len), IGNORE, dtype=torch.long)
        for idx in np.unique(picks).tolist():
            rows = np.flatnonzero(picks == idx)
            x, y = self.generators[idx].generate(len(rows), 2 * _seed("train", seed, step, self.levels[idx]))
            inputs[rows, : x.shape[1]] = x
            targets[rows, : y.shape[1]] = y
        return inputs, targets

    def eval_set(self, level: str, n_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out examples of one level (odd generator seeds, cached)."""
        i = self.levels.index(level)
        key = (i, n_examples, seed)
        if key not in self._eval_cache:
            self._eval_cache[key] = self.generators[i].generate(n_examples, 2 * _seed("eval", seed, level) + 1)
        return self._eval_cache[key]

    @torch.no_grad()
    def evaluate(self, logits_fn: Callable[[torch.Tensor], torch.Tensor], n_examples: int = 64,
                 batch_size: int = 32, seed: int = 1234) -> dict[str, float]:
        """Accuracy per level plus ``"recall"`` (mean over levels within a task, then over tasks).

        Args:
            logits_fn: maps CPU inputs ``(B, T)`` to logits ``(B, T, V)`` on any device.
            n_examples: held-out examples per level.
            batch_size: examples per ``logits_fn`` call.
            seed: evaluation seed (examples never coincide with a training seed).
        """
        if n_examples < 1 or batch_size < 1:
            raise ConfigError(f"recall eval: n_examples {n_examples!r} and batch_size {batch_size!r} must be >= 1")
        out: dict[str, float] = {}
        per_task: dict[str, list[float]] = {}
        for spec, gen, level in zip(self.specs, self.generators, self.levels):
            x, y = self.eval_set(level, n_examples, seed)
            out[level] = level_accuracy(logits_fn, x, y, batch_size, getattr(gen, "score", position_accuracy))
            per_task.setdefault(spec.task, []).append(out[level])
        out["recall"] = float(np.mean([np.mean(v) for v in per_task.values()]))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"train_seq_len": self.train_seq_len, "tasks": [s.to_dict() for s in self.specs]}
