"""Rung 0 asks only for layouts it has not scored yet.

Optuna's samplers know parameters, not layouts: in a small discrete space they propose the same layout again and
again (TPE samples at random for its first 10 trials; the quickstart's 7 trials once held 5 distinct layouts, two
of them the Transformer again), and several parameter sets build one layout (any placement with no attention
layer). Each repeat used to be a trial spent on nothing new. `FreshAsk` makes every counted rung-0 trial a new
layout:

- A proposal whose layout the rung already has (scored, running or queued) is not trained. It is told PRUNED
  with user attr ``repeat_of`` (the trial that holds the layout) and the sampler is asked again. PRUNED trials do
  not count toward ``n_trials`` (`hyla.search.study.counted`); TPE files them with its poor trials, which steers
  it away from what is already scored.
- After `REASKS` repeats in a row the next layout is drawn (seeded) from the layouts the rung lacks: from the
  enumerated space (`enumerate_layouts`, spaces of at most `ENUMERATION_LIMIT` parameter sets), enqueued so the
  next ask takes it; in a space too large to enumerate, from Optuna's RandomSampler.
- A space with at most ``n_trials`` distinct layouts is swept: every layout the rung lacks is enqueued up front.
  When no layout is left the rung ends before ``n_trials`` (`FreshAsk.exhausted`).

Later rungs only replay promoted layouts, which are distinct already; they keep the old rule (a repeated layout
reuses the stored result).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

#: Repeated proposals in a row before the next layout is drawn from those the rung lacks.
REASKS = 3
#: Spaces with at most this many parameter sets are enumerated (a few ms); larger ones are asked at random.
ENUMERATION_LIMIT = 1024
#: Random proposals in a row, in a space too large to enumerate, that may all be repeats before the rung ends.
RANDOM_TRIES = 200


class _Branch:
    """A trial that takes the choice indices of ``path`` (then the first choice) and records every choice made."""

    def __init__(self, path: list[int]) -> None:
        self.path = path
        self.taken: list[int] = []
        self.widths: list[int] = []
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        i = self.path[len(self.taken)] if len(self.taken) < len(self.path) else 0
        self.taken.append(i)
        self.widths.append(len(choices))
        self.params[name] = choices[i]
        return choices[i]


def enumerate_layouts(space: Any, limit: int = ENUMERATION_LIMIT) -> dict[str, dict[str, Any]] | None:
    """Every distinct layout of a `SearchSpace`: ``{layout key: parameters that build it}`` (the first set found).

    Walks the tree of `suggest_layout`'s choices depth first. None when the space has more than ``limit``
    parameter sets (free placement over 24 layers has 2^24).
    """
    from hyla.space.search_space import suggest_layout

    out: dict[str, dict[str, Any]] = {}
    todo: list[list[int]] = [[]]
    for _ in range(limit):
        if not todo:
            return out
        trial = _Branch(todo.pop())
        out.setdefault(suggest_layout(trial, space).key(), trial.params)
        for pos in range(len(trial.path), len(trial.taken)):  # choices this walk took by default: branch there
            todo.extend(trial.taken[:pos] + [alt] for alt in range(trial.widths[pos] - 1, 0, -1))
    return out if not todo else None


class FreshAsk:
    """Asks rung 0's study for trials whose layouts the rung does not have (see the module docstring)."""

    def __init__(self, study: optuna.Study, space: Any, seed: int) -> None:
        self.study, self.space = study, space
        self.layouts = enumerate_layouts(space)
        self.rng = random.Random(f"{seed}/{len(study.get_trials(deepcopy=False))}")  # reproducible per resume
        self.exhausted = False
        self.repeats = 0

    def sweep(self, have: Mapping[str, int], n_trials: int) -> int:
        """Enqueue every layout the rung lacks when the space has at most ``n_trials``; returns how many."""
        if self.layouts is None or len(self.layouts) > n_trials:
            return 0
        from hyla.space.search_space import suggest_layout

        queued = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))  # enqueue_trial keeps the
        waiting = {suggest_layout(optuna.trial.FixedTrial(t.system_attrs.get("fixed_params", {})),  # params here
                                  self.space).key() for t in queued}
        new = [params for key, params in self.layouts.items() if key not in have and key not in waiting]
        for params in new:
            self.study.enqueue_trial(params)
        return len(new)

    def ask(self, have: Mapping[str, int]) -> tuple[optuna.Trial, Any] | None:
        """A trial and its layout, which is not in ``have`` (layout key -> the trial holding it); None (and
        `exhausted`) when the space has no other layout or random proposals stop finding one."""
        from hyla.space.search_space import suggest_layout

        in_a_row = 0
        while True:
            sampler = None
            if self.layouts is not None:
                lacking = [key for key in self.layouts if key not in have]
                if not lacking:
                    self.exhausted = True
                    return None
                if in_a_row >= REASKS:
                    self.study.enqueue_trial(self.layouts[self.rng.choice(lacking)])
            elif in_a_row >= REASKS + RANDOM_TRIES:
                self.exhausted = True
                return None
            elif in_a_row >= REASKS:  # parameters are drawn at suggest time: swap until the layout is built
                random_sampler = optuna.samplers.RandomSampler(self.rng.randrange(2**31))
                sampler, self.study.sampler = self.study.sampler, random_sampler
            try:
                trial = self.study.ask()
                layout = suggest_layout(trial, self.space)
            finally:
                if sampler is not None:
                    self.study.sampler = sampler
            key = layout.key()
            if key not in have:
                return trial, layout
            self._tell_repeat(trial, layout, have[key])
            in_a_row += 1

    def _tell_repeat(self, trial: optuna.Trial, layout: Any, of: int) -> None:
        for name, value in (("layout", layout.to_dict()), ("layout_key", layout.key()), ("rung", 0),
                            ("repeat_of", of), ("status", "repeat")):
            trial.set_user_attr(name, value)
        for name in ("parent", "preset"):
            if name not in trial.user_attrs:
                trial.set_user_attr(name, None)
        self.study.tell(trial, state=TrialState.PRUNED)
        self.repeats += 1
