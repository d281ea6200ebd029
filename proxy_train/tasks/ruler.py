"""RULER-style retrieval in a haystack of real text (Hsieh et al. 2024, NVIDIA/RULER), teacher-forced for proxies.

Parameters (``NeedleTask``):
    tokenizer: the LM tokenizer (``hyla.proxy_train.train.text.get_tokenizer``); needles, haystack and questions are
        ordinary text tokenized with it, so ids stay below ``tokenizer.vocab_size`` (no reserved symbols).
    haystack_docs: documents whose text fills the context (RULER's "essay" haystack); empty → RULER's noise
        haystack ("The grass is green. The sky is blue. ...").
    seq_len: context length T.
    kind: ``single`` (one needle), ``multikey`` (``num_needles`` needles, one queried), ``multivalue``
        (``num_values`` needles sharing the queried key), ``multiquery`` (``num_queries`` needles, all queried).
    value_digits: length of the magic numbers (RULER: 7).
``VariableTracking``: ``num_chains`` chains of ``num_hops`` assignments (``VAR ABCDE = 12345.`` then
    ``VAR FGHIJ = VAR ABCDE.`` ...) at increasing depths; the question asks for every variable holding the
    first chain's value; the answer lists them in assignment order.

A needle reads "One of the special magic numbers for <key> is: <value>." (keys are adjective-noun words), placed
at random depths in a random window of the haystack. The example ends with the question and its answer
("... The special magic number for <key> mentioned in the provided text is: <value>"): the answer tokens are the
only scored targets. A proxy cannot sample free text cheaply, so it is scored teacher-forced: every answer token
is a target, and an answer counts when all its tokens are predicted (exact match per answer, see
``common.span_exact_match``); an example's score is the share of its answers found (RULER's string match).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.tasks.common import IGNORE, check_positive, make_rng, span_exact_match

_ADJ = ("adjoining amused ancient brave bright calm clever curly damp eager early fancy fierce gentle giant glossy "
        "grumpy hollow humble icy jolly lively lucky mellow misty noisy odd pale polite quiet rapid rusty shaggy "
        "silent sleepy smooth sour spicy steady tidy vast wary witty").split()
_NOUN = ("anchor badger basket beacon cactus candle castle comet falcon fiddle garden glacier harbor helmet island "
         "jackal kettle ladder lantern meadow mirror nectar otter parrot pebble pillow quartz rabbit saddle shovel "
         "spider teapot thistle tulip umbrella violin walrus whale willow zebra").split()
_KEYS = [f"{a}-{n}" for a in _ADJ for n in _NOUN]
_KEYS_LONGEST_FIRST = sorted(_KEYS, key=len, reverse=True)
_NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KINDS = ("single", "multikey", "multivalue", "multiquery")
#: Wordings: RULER's own, and a short one that leaves room for a haystack at T = 128-256 with byte tokens.
TEMPLATES = {
    "ruler": {
        "needle": "One of the special magic numbers for {key} is: {value}. ",
        "one": "\nWhat is the special magic number for {key} mentioned in the provided text? "
               "The special magic number for {key} mentioned in the provided text is: ",
        "many": "\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
                "The special magic numbers for {key} mentioned in the provided text are: ",
        "vt": "\nFind all variables that are assigned the value {value} in the text above. Answer: According to "
              "the chain(s) of variables assignment in the text above, {n} variables are assigned the value "
              "{value}, they are: ",
    },
    "short": {
        "needle": "The magic number for {key} is {value}. ",
        "one": "\nThe magic number for {key} is ",
        "many": "\nThe magic numbers for {key} are ",
        "vt": "\nVariables equal to {value}: ",
    },
}


def _check_template(template: str) -> None:
    if template not in TEMPLATES:
        raise ConfigError(f"ruler.template: {template!r} is not allowed; expected one of {', '.join(TEMPLATES)}")


@functools.lru_cache(maxsize=16)
def _haystack_ids(tokenizer: Any, docs: tuple[str, ...], max_tokens: int) -> np.ndarray:
    """The haystack as one token stream (documents joined by blank lines), capped at ``max_tokens``."""
    parts, total = [], 0
    for doc in docs or (_NOISE * 64,):
        ids = tokenizer.encode(doc.strip() + "\n\n")
        parts.append(np.asarray(ids, dtype=np.int64))
        total += len(ids)
        if total >= max_tokens:
            break
    return np.concatenate(parts)[:max_tokens]


@dataclass(frozen=True, kw_only=True)
class _HaystackTask:
    tokenizer: Any = field(compare=False, repr=False)
    haystack_docs: Sequence[str] = field(default=(), compare=False, repr=False)
    seq_len: int = 256
    template: str = "ruler"
    max_haystack_tokens: int = 200_000

    score = staticmethod(span_exact_match)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    def _enc(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def _example(self, rng: np.random.Generator,
                 longest: bool = False) -> tuple[list[list[int]], list[int], list[list[int]], str]:
        """(needle token lists in order, question tokens, answer token lists, answer separator).

        ``longest`` picks the longest keys, for the worst-case length check at construction.
        """
        raise NotImplementedError

    def _check_fits(self) -> None:
        """Refuse a ``seq_len`` that cannot hold the longest needles, question and answer."""
        needles, question, answers, sep = self._example(make_rng(0, self.name), longest=True)
        need = sum(map(len, needles)) + len(question) + sum(map(len, answers)) + \
            len(self._enc(sep)) * (len(answers) - 1)
        if need > self.seq_len + 1:
            raise ConfigError(f"{self.name}.seq_len: {self.seq_len} is too short for the needles, question and "
                              f"answer (up to {need - 1} tokens)")

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: LongTensors ``(n, seq_len)``; only answer tokens are scored."""
        check_positive(self.name, n=n)
        rng = make_rng(seed, self.name)
        hay = _haystack_ids(self.tokenizer, tuple(self.haystack_docs), self.max_haystack_tokens)
        inputs = np.empty((n, self.seq_len), dtype=np.int64)
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        for i in range(n):
            for _ in range(100):  # with subword tokenizers the longest keys need not be the longest in tokens
                needles, question, answers, sep = self._example(rng)
                tail, scored = list(question), []
                for j, ans in enumerate(answers):
                    if j:
                        tail += self._enc(sep)
                    scored += range(len(tail), len(tail) + len(ans))
                    tail += ans
                budget = self.seq_len + 1 - len(tail) - sum(map(len, needles))
                if budget >= 0:
                    break
            else:
                raise ConfigError(f"{self.name}.seq_len: {self.seq_len} is too short for the needles, question "
                                  f"and answer ({self.seq_len - budget} tokens)")
            reps = -(-(budget + 1) // len(hay))  # a short haystack is repeated
            stream = np.tile(hay, reps) if reps > 1 else hay
            start = int(rng.integers(0, len(stream) - budget + 1))
            chunk = stream[start:start + budget].tolist()
            # Needles go between words where the tokenizer has whitespace tokens (bytes), anywhere otherwise.
            cuts = [0] + [k + 1 for k, t in enumerate(chunk) if t in self._space_ids]
            if len(cuts) < 4 * len(needles):  # subword text has few lone whitespace tokens: any position then
                cuts = list(range(budget + 1))
            depths = np.sort(rng.choice(np.asarray(cuts), size=len(needles)))
            seq: list[int] = []
            prev = 0
            for d, needle in zip(depths.tolist(), needles):
                seq += chunk[prev:d] + needle
                prev = d
            seq += chunk[prev:]
            offset = len(seq)
            seq += tail
            inputs[i] = seq[:-1]
            for s in scored:  # next-token convention: the answer token at offset+s is the target of the one before
                targets[i, offset + s - 1] = seq[offset + s]
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    @functools.cached_property
    def _space_ids(self) -> frozenset[int]:
        return frozenset(ids[0] for ids in (self._enc(" "), self._enc("\n")) if len(ids) == 1)

    def _number(self, rng: np.random.Generator, digits: int) -> str:
        return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


@dataclass(frozen=True, kw_only=True)
class NeedleTask(_HaystackTask):
    """RULER needle-in-a-haystack: single, multi-key, multi-value, multi-query (module docstring)."""

    kind: str = "single"
    num_needles: int = 4
    num_values: int = 4
    num_queries: int = 2
    value_digits: int = 7

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"ruler.kind: {self.kind!r} is not allowed; expected one of {', '.join(KINDS)}")
        _check_template(self.template)
        check_positive(self.name, seq_len=self.seq_len, num_needles=self.num_needles, num_values=self.num_values,
                       num_queries=self.num_queries, value_digits=self.value_digits)
        self._check_fits()

    @property
    def name(self) -> str:
        return f"ruler_{self.kind}"

    @property
    def level(self) -> str:
        return f"{self.name}@{self.seq_len}"

    def _example(self, rng: np.random.Generator,
                 longest: bool = False) -> tuple[list[list[int]], list[int], list[list[int]], str]:
        n_keys = {"single": 1, "multikey": self.num_needles, "multivalue": 1, "multiquery": self.num_queries}
        if longest:
            keys = list(_KEYS_LONGEST_FIRST[:n_keys[self.kind]])
        else:
            picks = rng.choice(len(_KEYS), size=n_keys[self.kind], replace=False)
            keys = [_KEYS[p] for p in picks.tolist()]
        if self.kind == "multivalue":
            pairs = [(keys[0], self._number(rng, self.value_digits)) for _ in range(self.num_values)]
        else:
            pairs = [(k, self._number(rng, self.value_digits)) for k in keys]
        order = rng.permutation(len(pairs)).tolist()  # needle order in the text
        tpl = TEMPLATES[self.template]
        needles = [self._enc(tpl["needle"].format(key=pairs[j][0], value=pairs[j][1])) for j in order]
        if self.kind == "multikey":
            asked = [int(rng.integers(len(pairs)))]
        elif self.kind == "multiquery":
            asked = list(range(len(pairs)))
        else:
            asked = [0]
        if self.kind == "multivalue":  # all values of the key, in the order they appear in the text
            ans = [pairs[j][1] for j in order]
            q = tpl["many"].format(key=keys[0])
        elif self.kind == "multiquery":
            ans = [pairs[j][1] for j in asked]
            q = tpl["many"].format(key=", ".join(pairs[j][0] for j in asked))
        else:
            ans = [pairs[asked[0]][1]]
            q = tpl["one"].format(key=pairs[asked[0]][0])
        return needles, self._enc(q), [self._enc(a) for a in ans], ", "


@dataclass(frozen=True, kw_only=True)
class VariableTracking(_HaystackTask):
    """RULER variable tracking: chains of ``VAR X = Y`` assignments (module docstring)."""

    num_chains: int = 1
    num_hops: int = 4
    value_digits: int = 5

    name = "ruler_vt"

    def __post_init__(self) -> None:
        _check_template(self.template)
        check_positive(self.name, seq_len=self.seq_len, num_chains=self.num_chains, num_hops=self.num_hops,
                       value_digits=self.value_digits)
        self._check_fits()

    @property
    def level(self) -> str:
        return f"{self.name}@{self.seq_len}"

    def _example(self, rng: np.random.Generator,
                 longest: bool = False) -> tuple[list[list[int]], list[int], list[list[int]], str]:
        letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
        names: set[str] = set()
        while len(names) < self.num_chains * (self.num_hops + 1):
            names.add("".join(rng.choice(letters, size=5)))
        pool = sorted(names)
        rng.shuffle(pool)
        chains, statements = [], []
        for c in range(self.num_chains):
            vars_ = pool[c * (self.num_hops + 1):(c + 1) * (self.num_hops + 1)]
            value = self._number(rng, self.value_digits)
            chains.append((vars_, value))
            steps = [f"VAR {vars_[0]} = {value}. "] + [f"VAR {b} = VAR {a}. " for a, b in zip(vars_, vars_[1:])]
            statements.append(steps)
        # Interleave chains but keep each chain's order: depths are sorted, so the sequence of needles is the order.
        order = rng.permutation(sum(([c] * len(s) for c, s in enumerate(statements)), [])).tolist()
        cursor = [0] * self.num_chains
        needles = []
        for c in order:
            needles.append(self._enc(statements[c][cursor[c]]))
            cursor[c] += 1
        vars_, value = chains[0]
        q = TEMPLATES[self.template]["vt"].format(value=value, n=len(vars_))
        return needles, self._enc(q), [self._enc(v) for v in vars_], " "
