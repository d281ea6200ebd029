"""Seeded synthetic recall tasks (MQAR, multi-hop, MAD, RULER-style) and the suite that mixes and scores them."""

from __future__ import annotations

from hyla.proxy_train.tasks.common import IGNORE, position_accuracy, span_exact_match
from hyla.proxy_train.tasks.mad import FuzzyRecall, InContextRecall, Memorization, NoisyRecall, SelectiveCopying
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.proxy_train.tasks.multihop import MultiHop
from hyla.proxy_train.tasks.ruler import NeedleTask, VariableTracking
from hyla.proxy_train.tasks.suite import SUITE_LEVELS, TASKS, RecallSuite, RecallTaskSpec
from hyla.proxy_train.tasks.levels import LEVEL_SETS, graded_levels, level_profile, state_pairs  # noqa: E402 (after suite)

__all__ = [
    "IGNORE", "LEVEL_SETS", "MQAR", "SUITE_LEVELS", "TASKS", "FuzzyRecall", "InContextRecall", "Memorization",
    "MultiHop", "NeedleTask",
    "NoisyRecall", "RecallSuite", "RecallTaskSpec", "SelectiveCopying", "VariableTracking", "position_accuracy",
    "span_exact_match", "graded_levels", "level_profile", "state_pairs",
]
