"""End-to-end searches on real local Ray with real proxies (few steps) and a real journal storage."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hyla.config import ConfigError
from hyla.search.config import load_study_config, study_config_from_dict
from hyla.search.prepare import prepare
from hyla.search.storage import load_rung_studies, open_study
from hyla.search.study import DRIVER_STOPPED, counted, run_search
from hyla.space.search_space import suggest_layout
from test_search_helpers import study_dict, write_study, ray_up


@pytest.fixture(scope="module", autouse=True)
def _ray() -> None:
    ray_up()


def _studies(cfg) -> dict[int, optuna.Study]:
    return load_rung_studies(prepare(cfg).storage, cfg.name)


def _trained_dirs(cfg, rung: int) -> list[Path]:
    """Run directories the workers actually wrote (a reused result writes none)."""
    return sorted((cfg.run_path / "trials" / f"rung{rung}").glob("trial*/result.json"))


def test_two_rungs_then_resume_with_more_trials(tmp_path: Path) -> None:
    path = write_study(tmp_path, "e2e", n_trials=3, rungs=[
        {"proxy": {**study_dict(tmp_path)["rungs"][0]["proxy"]}, "promote": {"rule": "pareto", "k": 2}},
        {"proxy": {**study_dict(tmp_path)["rungs"][0]["proxy"], "steps": 3}}])
    cfg = load_study_config(path)
    summary = run_search(cfg)
    rung0, rung1 = _studies(cfg)[0], _studies(cfg)[1]
    t0 = [t for t in rung0.get_trials() if t.state != TrialState.PRUNED]  # pruned: repeats, never trained
    assert counted(t0) == 3 and all(t.state == TrialState.COMPLETE for t in t0)
    assert rung0.user_attrs["objectives"] == [{"name": "lm_loss", "direction": "minimize"},
                                              {"name": "recall", "direction": "maximize"},
                                              {"name": "memory_bytes", "direction": "minimize"}]
    assert rung0.user_attrs["space_key"] == prepare(cfg).space.key()
    for t in t0:
        assert t.user_attrs["rung"] == 0 and t.user_attrs["parent"] is None
        assert t.user_attrs["result"]["status"] == "ok" and len(t.values) == 3
    # rung 1 re-trains rung 0's promotion set: same layouts, parent links, the longer proxy
    t1 = rung1.get_trials()
    keys0 = {t.number: t.user_attrs["layout_key"] for t in t0}
    assert 1 <= len(t1) <= 2 and all(t.state == TrialState.COMPLETE for t in t1)
    for t in t1:
        assert t.user_attrs["rung"] == 1
        assert keys0[t.user_attrs["parent"]] == t.user_attrs["layout_key"]
        if "reused_from" not in t.user_attrs:
            assert t.user_attrs["result"]["steps"] == 3
    assert summary.pareto and summary.pareto_rung == 1
    first = {t.number: (t.values, t.datetime_complete) for t in t0}
    trained0 = len(_trained_dirs(cfg, 0))

    # resume: 3 more rung-0 trials; nothing done before is redone or lost
    cfg6 = load_study_config(path, n_trials=6)
    summary = run_search(cfg6)
    t0 = [t for t in _studies(cfg6)[0].get_trials() if t.state != TrialState.PRUNED]
    assert counted(t0) == 6 and len(t0) == 6
    by_number = {t.number: t for t in t0}
    for n, (values, done) in first.items():
        assert by_number[n].values == values and by_number[n].datetime_complete == done
    new = [t for t in t0 if t.number not in first]
    trained_new = sum(1 for t in new if "reused_from" not in t.user_attrs)
    assert len(_trained_dirs(cfg6, 0)) == trained0 + trained_new
    assert summary.rungs[0].completed == 3
    # rung 1: each parent at most once
    parents = [t.user_attrs["parent"] for t in _studies(cfg6)[1].get_trials()]
    assert len(parents) == len(set(parents))


def test_running_trial_left_by_dead_driver_is_redone_once(tmp_path: Path) -> None:
    cfg = study_config_from_dict(study_dict(tmp_path, "stale", n_trials=2), where="stale.yaml")
    prep = prepare(cfg)
    study = open_study(prep.storage, cfg.study_name(0), cfg.directions, prep.study_attrs(0),
                       sampler=prep.sampler(0))
    ghost = study.ask()  # a driver asked, started, then died: the trial stays RUNNING in storage
    layout = suggest_layout(ghost, prep.space)
    ghost.set_user_attr("layout_key", layout.key())
    run_search(cfg)
    trials = _studies(cfg)[0].get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["fail_reason"] == DRIVER_STOPPED
    redo = [t for t in trials if t.user_attrs.get("requeued_from") == 0]
    assert len(redo) == 1 and redo[0].state == TrialState.COMPLETE and redo[0].params == trials[0].params
    assert counted(trials) == 2 and len([t for t in trials if t.state != TrialState.PRUNED]) == 3
    run_search(cfg)  # a second resume changes nothing
    assert len(_studies(cfg)[0].get_trials()) == len(trials)


def test_a_space_of_one_layout_trains_it_once_and_stops(tmp_path: Path) -> None:
    space = {"scale": "tiny", "n_layers": 2, "mixers": ["gla"], "n_attention": [1]}  # exactly one layout
    cfg = study_config_from_dict(study_dict(tmp_path, "dup", n_trials=3, space=space), where="dup.yaml")
    summary = run_search(cfg)
    trials = _studies(cfg)[0].get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] and len(_trained_dirs(cfg, 0)) == 1
    assert summary.rungs[0].exhausted and summary.rungs[0].completed == 1 and summary.rungs[0].repeats == 0
    assert len(_studies(cfg)[0].get_trials()) == 1
    run_search(load_study_config_dict(tmp_path, "dup", n_trials=5, space=space))  # more trials: still nothing new
    assert len(_studies(cfg)[0].get_trials()) == 1


def test_rung0_trials_are_distinct_layouts(tmp_path: Path) -> None:
    """SPACE has 10 layouts from 2 x 3 x 2 = 12 parameter sets (no attention: any placement); 6 trials = 6 layouts.
    A repeat proposal is pruned with ``repeat_of`` and not counted; a later rung still reuses stored results."""
    cfg = study_config_from_dict(study_dict(tmp_path, "fresh", n_trials=6, seed=3), where="fresh.yaml")
    summary = run_search(cfg)
    trials = _studies(cfg)[0].get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert counted(trials) == 6 and len(done) == 6 and len(_trained_dirs(cfg, 0)) == 6
    assert len({t.user_attrs["layout_key"] for t in done}) == 6
    keys = {t.user_attrs["layout_key"]: t.number for t in done}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(keys[t.user_attrs["layout_key"]] == t.user_attrs["repeat_of"] for t in pruned)
    assert summary.rungs[0].repeats == len(pruned) and summary.rungs[0].reused == 0


def load_study_config_dict(tmp_path: Path, name: str, **kw):
    return study_config_from_dict(study_dict(tmp_path, name, **kw), where=f"{name}.yaml")


def test_diverging_proxy_fails_with_reason(tmp_path: Path) -> None:
    proxy = {**study_dict(tmp_path)["rungs"][0]["proxy"], "lr": 1e6, "steps": 4, "grad_clip": 0.0}
    cfg = study_config_from_dict(study_dict(tmp_path, "div", n_trials=2, rungs=[{"proxy": proxy}]),
                                 where="div.yaml")
    summary = run_search(cfg)
    trials = _studies(cfg)[0].get_trials()
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)
    for t in trials:
        assert t.user_attrs["status"] == "diverged" and t.user_attrs["fail_reason"]
        assert t.user_attrs["result"]["diverged_step"] is not None
    assert summary.rungs[0].failed == 2 and not summary.pareto


def test_cli_run_status_and_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hyla.cli import main

    path = write_study(tmp_path, "cli", n_trials=2)
    assert main(["search", "run", str(path), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "Pareto set of cli/rung0" in out and "2 completed" in out
    assert "\nlayer letters: " in out  # under the Pareto table: what its layout letters mean
    assert main(["search", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "cli/rung0: 2 trials: complete 2" in out and "\nlayer letters: " in out

    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("n_trials:", "n_trails:"))
    assert main(["search", "run", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "n_trails" in err and "n_trials" in err


def test_proxy_config_error_stops_the_search(tmp_path: Path) -> None:
    proxy = {**study_dict(tmp_path)["rungs"][0]["proxy"], "seq_len": 16}  # shorter than every recall level
    cfg = study_config_from_dict(study_dict(tmp_path, "cfgerr", rungs=[{"proxy": proxy}]), where="cfgerr.yaml")
    with pytest.raises(ConfigError, match=r"cfgerr.yaml: rungs\[0\].proxy"):
        run_search(cfg)


def test_start_up_is_announced_before_the_first_trial(tmp_path: Path) -> None:
    import io

    import ray
    from rich.console import Console

    from hyla.search.workers import shutdown_pools

    shutdown_pools()
    ray.shutdown()  # a cold start, as from the command line; run_search starts the same 2-CPU local Ray again
    buf = io.StringIO()
    cfg = study_config_from_dict(study_dict(tmp_path, "hello", n_trials=1), where="hello.yaml")
    run_search(cfg, console=Console(file=buf, width=200), show_progress=False)
    lines = buf.getvalue().splitlines()
    assert lines[:3] == ["starting Ray (local, 2 CPUs) ...", lines[1],
                         "starting 2 proxy worker(s) (1 CPU each, importing torch) ..."]
    assert lines[1].startswith("Ray ready after ") and lines[1].endswith(" s")
    assert lines[3].startswith("proxy workers: 1/2 ready after ")  # the trial can only start after this
    assert all(line.startswith("proxy workers: 2/2 ready after ") for line in lines[4:])  # unless it ended first
    buf.truncate(0)
    buf.seek(0)
    run_search(cfg, console=Console(file=buf, width=200), show_progress=False)  # warm: nothing to wait for
    assert buf.getvalue().splitlines()[0] == "reusing 2 warm proxy worker(s) (1 CPU each)"


# last: it needs its own 1-worker pool, which replaces the warm 2-worker pool the other tests share
def test_worker_death_is_retried_then_recorded(tmp_path: Path) -> None:
    crash = tmp_path / "crashes"  # the worker process os._exit()s while this count is below 3
    env = {"HYLA_FAULT_EXIT_FILE": str(crash), "HYLA_FAULT_EXIT_TIMES": "3"}
    one = {"num_workers": 1, "cpus_per_worker": 1}
    cfg = study_config_from_dict(study_dict(tmp_path, "die", n_trials=1, ray=one, retries=1), where="die.yaml")
    summary = run_search(cfg, worker_env=env)
    (t,) = _studies(cfg)[0].get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["status"] == "worker_died"
    assert t.user_attrs["fail_reason"].startswith("worker died 2 time(s)") and crash.read_text() == "2"
    assert summary.rungs[0].retried == 1

    cfg = study_config_from_dict(study_dict(tmp_path, "live", n_trials=1, ray=one, retries=1), where="live.yaml")
    summary = run_search(cfg, worker_env=env)  # one more death, then the retry on a fresh worker succeeds
    (t,) = _studies(cfg)[0].get_trials()
    assert t.state == TrialState.COMPLETE and summary.rungs[0].retried == 1 and crash.read_text() == "3"
