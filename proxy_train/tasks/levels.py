"""Graded recall level sets for the teacher and the retrofit proxy (issue 31), sized by the linear states.

A level set is a named suite preset (``RecallSuite.named("retrofit-tiny", vocab)``), built by `graded_levels`
for one model scale; the teacher trains on it and every proxy family scores on it, so all share one exam:

- **MQAR past capacity**: ``state_pairs`` is the recurrent state of one linear layer at the scale's width
  (``hyla.space.cost``'s exact sizes, `MixerKind.formula`) divided by the width: how many d-wide value vectors
  the state could hold at most. Its median over the paper's six mixers (GLA, GDN, HGRN-2 and DeltaNet share one
  state size by design, RetNet has 4x, HGRN 1/d of it) is ``cap``. The MQAR levels have ``cap/4, cap/2, cap,
  2 cap`` pairs at one length ``T = 4 x the most pairs`` (rounded up to a power of two), each with the fewest
  symbols its pairs allow (``2 x pairs``, at least 32). Pair counts whose symbols do not fit above the byte
  text ids (``vocab_size - TEXT_IDS``) are dropped and replaced by the largest that fits (a multiple of 8).
- **Multi-hop** (`tasks.multihop.MultiHop`, random link order): ``hops = 1..4`` with ``chains = cap/4`` chains
  (capped so the 4-hop level's variables fit the symbols), so the 4-hop context holds ``cap`` links; one length
  and one symbol range for all hop levels.

Sets at the presets' scales (``hyla.space.presets.SCALES``, vocab 512, 252 symbols above the bytes)::

    retrofit-tiny   d 32:  cap 16;  mqar@128 x 4/8/16/32;  hop1-4@64 x 4 chains
    retrofit-mini   d 64:  cap 32;  mqar@256 x 8/16/32/64; hop1-4@128 x 8 chains
    retrofit-small  d 256: cap 128; mqar@512 x 32/64/120 (256 pairs need 512 symbols); hop1-4@256 x 16 chains

Which levels a teacher solves decides which levels score (``retrofit.teacher.unsolved``): a 24 x 32 teacher
learned MQAR and hop1 at tiny within a few hundred steps but not hop2-4 in 1000-1400 steps on 2 CPU cores
(``benchmarks/results/retrofit_notes.md``: multi-hop is a second, slower transition). So:

- ``retrofit-tiny-mqar`` (MQAR at T 64 x 2/4/8/16 pairs, 64 symbols: up to the tiny state's 16 pairs) is the CPU
  calibration's set (``bench_fidelity_v2.py --recipe cpu-tiny``): the teacher solves all of it in 1600 steps
  (0.97-1.00) and its solved-check fails loudly otherwise;
- ``retrofit-tiny/mini/small`` keep the hop levels; a teacher that does not solve a level fails with its name
  (``unsolved: fail``, the default) or, with ``unsolved: drop`` (the GPU recipe), has it left out of every
  student's scores and of the floor, said in the log and in each record's ``extra.dropped``. No student is ever
  scored on a level its teacher did not solve.

``lookups``, ``pairs`` and ``floor`` of a level (`level_profile`) are what the capacity-composed family reads:
the dependent lookups an answer needs, the pairs in its context, and the score of guessing one of the
context's values.

Public API (stable): ``TEXT_IDS``, ``LEVEL_SETS``, ``state_pairs(kind, d_model)``, ``graded_levels(scale)``,
``mqar_levels(seq_len, pairs, task_vocab)``, ``level_profile(generator) -> LevelProfile``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from hyla.config import ConfigError
from hyla.proxy_train.tasks.suite import SUITE_LEVELS, RecallTaskSpec
from hyla.space.mixer_kinds import PAPER_MIXERS, get_mixer_kind
from hyla.space.presets import Scale, get_scale

#: ids taken by LM text (hyla's byte tokenizer: 256 bytes + 4 specials); task symbols sit above them
TEXT_IDS = 260
#: hop counts of every set
HOPS = (1, 2, 3, 4)
#: level-set name -> scale
SET_SCALES = {"retrofit-tiny": "tiny", "retrofit-mini": "mini", "retrofit-small": "small"}


@dataclass(frozen=True)
class LevelProfile:
    """What an answer of a level needs: ``lookups`` dependent lookups over ``pairs`` key-value pairs; ``floor``
    is the accuracy of guessing one of the context's values (1/pairs for MQAR, 1/chains for multi-hop)."""

    level: str
    lookups: int
    pairs: int
    floor: float


def state_pairs(kind: str, d_model: int) -> int:
    """Recurrent state elements of one ``kind`` layer at ``d_model`` (default options), divided by ``d_model``."""
    return get_mixer_kind(kind).formula(d_model).recurrent_elems // d_model


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def graded_levels(scale: str | Scale) -> tuple[RecallTaskSpec, ...]:
    """The MQAR and multi-hop levels of one scale (module docstring), easiest first within each task."""
    sc = get_scale(scale)
    symbols = sc.vocab_size - TEXT_IDS
    if symbols < 32:
        raise ConfigError(f"level set: scale {sc.name} has vocab_size {sc.vocab_size}; graded levels need >= "
                          f"{TEXT_IDS + 32} (32 symbols above the text ids)")
    cap = max(4, int(statistics.median(state_pairs(k, sc.d_model) for k in PAPER_MIXERS)))
    most = symbols // 2 // 8 * 8  # pairs whose 2 x pairs symbols fit
    pairs = [p for p in (cap // 4, cap // 2, cap, 2 * cap) if p <= most]
    if len(pairs) < 4:
        pairs.append(most)
    mqar_len = _pow2_at_least(4 * pairs[-1])
    mqar = [RecallTaskSpec("mqar", mqar_len, {"num_kv_pairs": p, "task_vocab": max(32, 2 * p)}) for p in pairs]
    chains = max(2, min(cap // 4, (symbols // 2) // HOPS[-1]))
    chains = 1 << (chains.bit_length() - 1)  # a power of two
    hop_len = _pow2_at_least(4 * chains * HOPS[-1])
    hop_vocab = max(32, 2 * chains * HOPS[-1])
    hop = [RecallTaskSpec("hop", hop_len, {"num_hops": k, "num_chains": chains, "task_vocab": hop_vocab})
           for k in HOPS]
    return (*mqar, *hop)


def level_profile(generator: Any) -> LevelProfile:
    """`LevelProfile` of a built level (``MQAR`` or ``MultiHop``); other tasks have none (ConfigError)."""
    try:
        return LevelProfile(generator.level, int(generator.lookups), int(generator.pairs), float(generator.floor))
    except AttributeError:
        raise ConfigError(f"recall level {generator.level}: no lookups/pairs profile; graded levels are mqar and "
                          "hop levels") from None


def mqar_levels(seq_len: int, pairs: tuple[int, ...], task_vocab: int) -> tuple[RecallTaskSpec, ...]:
    """MQAR levels at one length and symbol range, one per pair count (easiest first)."""
    return tuple(RecallTaskSpec("mqar", seq_len, {"num_kv_pairs": p, "task_vocab": task_vocab}) for p in pairs)


LEVEL_SETS: dict[str, tuple[RecallTaskSpec, ...]] = {name: graded_levels(s) for name, s in SET_SCALES.items()}
#: the CPU set at tiny: the levels a 24 x 32 teacher solves in a CPU budget (module docstring)
LEVEL_SETS["retrofit-tiny-mqar"] = mqar_levels(64, (2, 4, 8, 16), 64)
SUITE_LEVELS.update(LEVEL_SETS)  # RecallSuite.named("retrofit-tiny", ...) (tasks/__init__ imports this module)
