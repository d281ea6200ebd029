"""MAD synthetic tasks (Poli et al. 2024, ``athms/mad-lab``): recall variants, selective copying, memorization.

All symbols come from the top ``task_vocab`` ids of ``vocab_size``. Training examples are scored wherever the
answer is determined by the context, as MAD does at test time (only recalled values / copied tokens).

``InContextRecall`` (MAD in-context recall, multi-query; defaults V=16, T=128): ``T/2`` pairs ``k v``; keys from
    the lower half of the (non-noise) symbols, each example has its own random key→value map (values may repeat).
    The target after a key is scored when that key already appeared earlier in the example.
``NoisyRecall`` (MAD noisy recall): as above, but each pair is replaced with probability ``frac_noise``
    (MAD 0.2-0.8, default 0.4) by two tokens from a separate ``noise_vocab`` (never scored).
``FuzzyRecall`` (MAD fuzzy recall): keys are motifs of ``key_len`` tokens and values motifs of ``value_len``
    tokens (MAD: up to 3); ``num_keys`` distinct key motifs per example; every value token of a repeated key is
    scored. Positions left after the last whole pair hold a pad symbol.
``SelectiveCopying`` (MAD selective copying; T=256, 16 tokens): ``num_tokens`` data tokens scattered (order kept)
    among blanks, then a copy marker, then the tokens again (teacher-forced); the ``num_tokens`` targets from the
    marker on are scored.
``Memorization`` (MAD memorization): a fixed key→value map (fixed by ``map_seed``, the same for every example
    and every seed), ``k v`` pairs, every value scored: what the model stored in its weights during training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hyla.config import ConfigError
from hyla.proxy_train.tasks.common import IGNORE, SymbolTask, check_positive, make_rng, to_tensors


@dataclass(frozen=True, kw_only=True)
class InContextRecall(SymbolTask):
    """MAD in-context recall (module docstring)."""

    vocab_size: int
    seq_len: int = 128
    task_vocab: int = 16
    noise_vocab: int = 0
    frac_noise: float = 0.0

    name = "icr"

    def __post_init__(self) -> None:
        check_positive(self.name, seq_len=self.seq_len)
        if self.seq_len % 2 or self.seq_len < 4:
            raise ConfigError(f"{self.name}.seq_len: {self.seq_len!r} must be even and >= 4")
        if not 0.0 <= self.frac_noise < 1.0:
            raise ConfigError(f"{self.name}.frac_noise: {self.frac_noise!r} must be in [0, 1)")
        if self.noise_vocab < 0 or (self.frac_noise > 0 and self.noise_vocab == 0):
            raise ConfigError(f"{self.name}.noise_vocab: {self.noise_vocab!r} must be >= 1 when frac_noise > 0")
        self.base  # validates the symbol range

    @property
    def symbols_needed(self) -> int:
        return self.noise_vocab + 2

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: LongTensors ``(n, seq_len)``."""
        check_positive(self.name, n=n)
        rng = make_rng(seed, self.name)
        base = self.base
        n_sym = self.task_vocab - self.noise_vocab
        half = n_sym // 2
        keys, values = base + np.arange(half), base + np.arange(half, n_sym)
        noise = base + np.arange(n_sym, self.task_vocab)
        pairs = self.seq_len // 2
        inputs = np.empty((n, self.seq_len), dtype=np.int64)
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        for i in range(n):
            table = rng.choice(values, size=half)  # this example's value of key j
            kidx = rng.integers(0, half, size=pairs)
            is_noise = rng.random(pairs) < self.frac_noise if self.frac_noise > 0 else np.zeros(pairs, bool)
            row = np.stack([keys[kidx], table[kidx]], axis=1)  # (pairs, 2)
            if is_noise.any():
                row[is_noise] = rng.choice(noise, size=(int(is_noise.sum()), 2))
            # only a key seen before (in a non-noise pair) has a recallable value
            real = np.flatnonzero(~is_noise)
            repeat = np.ones(len(real), dtype=bool)
            repeat[np.unique(kidx[real], return_index=True)[1]] = False
            inputs[i] = row.reshape(-1)
            targets[i, 2 * real[repeat]] = row[real[repeat], 1]
        return to_tensors(inputs, targets)


@dataclass(frozen=True, kw_only=True)
class NoisyRecall(InContextRecall):
    """MAD noisy recall: in-context recall with noise pairs (module docstring)."""

    task_vocab: int = 32
    noise_vocab: int = 16
    frac_noise: float = 0.4

    name = "noisy_recall"


@dataclass(frozen=True, kw_only=True)
class FuzzyRecall(SymbolTask):
    """MAD fuzzy recall with multi-token keys and values (module docstring)."""

    vocab_size: int
    seq_len: int = 128
    task_vocab: int = 32
    key_len: int = 2
    value_len: int = 2
    num_keys: int = 8

    name = "fuzzy_recall"

    def __post_init__(self) -> None:
        check_positive(self.name, key_len=self.key_len, value_len=self.value_len, num_keys=self.num_keys)
        if self.seq_len < 2 * (self.key_len + self.value_len):
            raise ConfigError(f"{self.name}.seq_len: {self.seq_len!r} must hold two pairs "
                              f"(>= {2 * (self.key_len + self.value_len)})")
        self.base  # validates the symbol range
        if ((self.task_vocab - 1) // 2) ** self.key_len < self.num_keys:
            raise ConfigError(f"{self.name}.num_keys: {self.num_keys!r} distinct key motifs do not fit in "
                              f"task_vocab {self.task_vocab} with key_len {self.key_len}")

    @property
    def symbols_needed(self) -> int:
        return 3

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: LongTensors ``(n, seq_len)``."""
        check_positive(self.name, n=n)
        rng = make_rng(seed, self.name)
        base = self.base
        half = (self.task_vocab - 1) // 2
        key_sym, val_sym = base + np.arange(half), base + np.arange(half, 2 * half)
        pad = self.vocab_size - 1
        m = self.key_len + self.value_len
        inputs = np.full((n, self.seq_len), pad, dtype=np.int64)
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        for i in range(n):
            motifs: set[tuple[int, ...]] = set()
            while len(motifs) < self.num_keys:
                motifs.add(tuple(rng.choice(key_sym, size=self.key_len).tolist()))
            key_list = sorted(motifs)
            vals = rng.choice(val_sym, size=(self.num_keys, self.value_len))
            seen: set[int] = set()
            for j, kid in enumerate(rng.integers(0, self.num_keys, size=self.seq_len // m)):
                s = j * m
                inputs[i, s:s + self.key_len] = key_list[kid]
                inputs[i, s + self.key_len:s + m] = vals[kid]
                if kid in seen:  # scored: the value tokens, predicted from the last key token on
                    targets[i, s + self.key_len - 1:s + m - 1] = vals[kid]
                seen.add(int(kid))
        return to_tensors(inputs, targets)


@dataclass(frozen=True, kw_only=True)
class SelectiveCopying(SymbolTask):
    """MAD selective copying (module docstring)."""

    vocab_size: int
    seq_len: int = 256
    num_tokens: int = 16
    task_vocab: int = 16

    name = "selective_copy"

    def __post_init__(self) -> None:
        check_positive(self.name, num_tokens=self.num_tokens)
        if self.seq_len < 2 * self.num_tokens + 1:
            raise ConfigError(f"{self.name}.seq_len: {self.seq_len!r} must be >= 2 * num_tokens + 1 = "
                              f"{2 * self.num_tokens + 1}")
        self.base  # validates the symbol range

    @property
    def symbols_needed(self) -> int:
        return 4

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: LongTensors ``(n, seq_len)``."""
        check_positive(self.name, n=n)
        rng = make_rng(seed, self.name)
        base = self.base
        blank, marker = self.vocab_size - 2, self.vocab_size - 1
        k, T = self.num_tokens, self.seq_len
        body = T - k - 1  # positions before the marker
        inputs = np.full((n, T), blank, dtype=np.int64)
        targets = np.full((n, T), IGNORE, dtype=np.int64)
        for i in range(n):
            toks = rng.integers(base, blank, size=k)
            pos = np.sort(rng.choice(body, size=k, replace=False))
            inputs[i, pos] = toks
            inputs[i, body] = marker
            inputs[i, body + 1:] = toks  # teacher forcing: the copy so far (the last one has no target)
            targets[i, body:T - 1] = toks
        return to_tensors(inputs, targets)


@dataclass(frozen=True, kw_only=True)
class Memorization(SymbolTask):
    """MAD memorization: a fixed key→value map learned in the weights (module docstring)."""

    vocab_size: int
    seq_len: int = 32
    task_vocab: int = 128
    map_seed: int = 0

    name = "memorization"

    def __post_init__(self) -> None:
        if self.seq_len % 2 or self.seq_len < 2:
            raise ConfigError(f"{self.name}.seq_len: {self.seq_len!r} must be even and >= 2")
        self.base  # validates the symbol range

    @property
    def symbols_needed(self) -> int:
        return 2

    def mapping(self) -> dict[int, int]:
        """The fixed key→value map (independent of the example seed)."""
        base = self.base
        half = self.task_vocab // 2
        vals = make_rng(self.map_seed, "memorization-map").integers(base + half, self.vocab_size, size=half)
        return {base + j: int(v) for j, v in enumerate(vals)}

    def generate(self, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples fixed by ``seed``: LongTensors ``(n, seq_len)``."""
        check_positive(self.name, n=n)
        kv = self.mapping()
        keys = np.array(sorted(kv))
        table = np.zeros(self.vocab_size, dtype=np.int64)
        table[keys] = [kv[k] for k in keys.tolist()]
        seq_keys = make_rng(seed, self.name).choice(keys, size=(n, self.seq_len // 2))
        inputs = np.empty((n, self.seq_len), dtype=np.int64)
        targets = np.full((n, self.seq_len), IGNORE, dtype=np.int64)
        inputs[:, 0::2], inputs[:, 1::2] = seq_keys, table[seq_keys]
        targets[:, 0::2] = table[seq_keys]
        return to_tensors(inputs, targets)
