"""Many processes writing ONE PostgreSQL-backed study at once (a real server on loopback, real OS processes).

Each of ``PROCS`` spawned processes opens the study through `hyla.search.storage` (the code path every driver
uses), then asks and tells ``PER_PROC`` trials with a cheap objective. All start together behind a barrier, so
their ``ask`` calls race for trial numbers in the same table. Afterwards the study must hold exactly
``PROCS * PER_PROC`` trials, all COMPLETE, with unique numbers 0..n-1 and exactly the values each process told.
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import pytest

from postgres_server import postgres_server, unavailable_reason

PG_SKIP = unavailable_reason()
PROCS = 8
PER_PROC = 6
NAME = "concurrent/rung0"
ATTRS: dict[str, Any] = {"space_key": "k-test", "objectives": [{"name": "lm_loss", "direction": "minimize"},
                                                                  {"name": "recall", "direction": "maximize"}]}


def _writer(url: str, worker: int, barrier: Any, out: Any) -> None:
    """One process: open the study via hyla's storage layer, then ask/tell PER_PROC trials."""
    import optuna

    from hyla.search.storage import open_storage, open_study

    storage = open_storage(url, where="writer")
    barrier.wait(timeout=60)  # every process asks at the same moment
    study = open_study(storage, NAME, ["minimize", "maximize"], ATTRS, sampler=optuna.samplers.RandomSampler(worker))
    told = []
    for i in range(PER_PROC):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("writer", [worker, i])
        values = [x + worker, float(i)]
        study.tell(trial, values)
        told.append((trial.number, values))
    out.put((worker, told))


@pytest.mark.postgres
@pytest.mark.skipif(PG_SKIP is not None, reason=f"PostgreSQL: {PG_SKIP}")
def test_eight_processes_ask_and_tell_one_study() -> None:
    import optuna
    from optuna.trial import TrialState

    from hyla.search.storage import open_storage, open_study

    with postgres_server() as url:
        # create the study (and Optuna's tables) once, as a driver would, so the writers only race on trials
        creator = open_storage(url)
        open_study(creator, NAME, ["minimize", "maximize"], ATTRS)
        creator.engine.dispose()  # forked children must not share the parent's pooled connections
        ctx = mp.get_context("fork")  # cheap start on 2 cores; each child opens its own connections
        barrier, out = ctx.Barrier(PROCS), ctx.Queue()
        procs = [ctx.Process(target=_writer, args=(url, w, barrier, out)) for w in range(PROCS)]
        for p in procs:
            p.start()
        results = {}
        try:
            for _ in range(PROCS):
                worker, told = out.get(timeout=240)
                results[worker] = told
        finally:
            for p in procs:
                p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * PROCS
        assert sorted(results) == list(range(PROCS))

        trials = optuna.load_study(study_name=NAME, storage=open_storage(url)).get_trials()
        n = PROCS * PER_PROC
        assert len(trials) == n
        assert sorted(t.number for t in trials) == list(range(n))  # unique, no gaps
        assert all(t.state == TrialState.COMPLETE for t in trials)
        writers = [tuple(t.user_attrs["writer"]) for t in trials]
        assert len(set(writers)) == n  # no trial stored twice
        by_number = {t.number: t for t in trials}
        for worker, told in results.items():
            for number, values in told:
                t = by_number[number]
                assert t.user_attrs["writer"][0] == worker and t.values == values
