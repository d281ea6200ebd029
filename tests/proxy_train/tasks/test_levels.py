"""Graded level sets (``tasks/levels.py``): sized by the exact state sizes, past the common state's capacity,
symbols above the text ids, registered as suite presets, and each level's lookups/pairs/floor profile."""

from __future__ import annotations

import pytest

from hyla.config import ConfigError
from hyla.proxy_train.tasks import LEVEL_SETS, RecallSuite, graded_levels, level_profile, state_pairs
from hyla.proxy_train.tasks.levels import SET_SCALES, TEXT_IDS
from hyla.proxy_train.tasks.mad import InContextRecall
from hyla.space.presets import Scale


def test_state_pairs_from_exact_state_sizes() -> None:
    # d 32: GLA K 16 x V 32, one head = 512 elements; RetNet K 32 x V 64 = 2048; HGRN 32 channels
    assert {k: state_pairs(k, 32) for k in ("gla", "gdn", "hgrn2", "deltanet", "retnet", "hgrn")} == \
        {"gla": 16, "gdn": 16, "hgrn2": 16, "deltanet": 16, "retnet": 64, "hgrn": 1}
    assert state_pairs("gla", 256) == 128


@pytest.mark.parametrize("name", sorted(SET_SCALES))
def test_level_sets_reach_past_capacity_and_fit_the_vocab(name: str) -> None:
    suite = RecallSuite.named(name, 512)
    profiles = [level_profile(g) for g in suite.generators]
    mqar = [p for p in profiles if p.level.startswith("mqar")]
    hops = [p for p in profiles if p.level.startswith("hop")]
    assert [p.lookups for p in hops] == [1, 2, 3, 4] and all(p.lookups == 1 for p in mqar)
    cap = state_pairs("gla", {"retrofit-tiny": 32, "retrofit-mini": 64, "retrofit-small": 256}[name])
    assert mqar[0].pairs < cap and max(p.pairs for p in mqar) >= min(2 * cap, 120)  # small: symbols cap it
    assert hops[-1].pairs <= cap
    for g in suite.generators:
        assert g.base >= TEXT_IDS  # symbols never collide with byte text
    assert all(0 < p.floor <= 0.25 for p in profiles)


def test_tiny_set_is_as_documented() -> None:
    assert RecallSuite.named("retrofit-tiny", 512).levels == (
        "mqar@128x4", "mqar@128x8", "mqar@128x16", "mqar@128x32", "hop1@64x4", "hop2@64x4", "hop3@64x4", "hop4@64x4")


def test_cpu_set_is_mqar_the_tiny_teacher_solves() -> None:
    suite = RecallSuite.named("retrofit-tiny-mqar", 512)
    assert suite.levels == ("mqar@64x2", "mqar@64x4", "mqar@64x8", "mqar@64x16")
    assert [level_profile(g).pairs for g in suite.generators] == [2, 4, 8, 16]
    assert all(g.base >= TEXT_IDS for g in suite.generators)


def test_profile_and_vocab_errors() -> None:
    with pytest.raises(ConfigError, match="no lookups/pairs profile"):
        level_profile(InContextRecall(vocab_size=512, seq_len=64))
    with pytest.raises(ConfigError, match="vocab_size 256"):
        graded_levels(Scale("t", 2, 32, 2, 64, 256))
