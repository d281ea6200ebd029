"""Real faults during a search: a worker SIGKILLed mid-trial, a proxy running out of memory, the driver SIGKILLed.

Faults are injected into the REAL worker processes with a test-only ``sitecustomize`` module (source below, written
to a temp dir) put on the workers' ``PYTHONPATH`` through ``run_search(worker_env=...)``: it wraps the proxy
trainer's training loop (`hyla.proxy_train.proxy.run._Loop.run`) and, per run, takes the next action from a plan
file shared by all workers (under a file lock):

- ``run``: train normally (also what happens once the plan is empty);
- ``hang``: write this process's PID to ``hang.pid`` and sleep, so the test can ``os.kill(pid, SIGKILL)`` it while
  the trial is running;
- ``oom``: raise ``torch.OutOfMemoryError`` from inside the loop, exactly where a CUDA allocation would.

Every action is logged as ``"<pid> <action>"``. All in-process tests use the same worker env, so they share one
warm 2-worker pool; the driver test runs ``python -m hyla search run`` as a subprocess with its own Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hyla.config import dump_yaml
from hyla.search.config import study_config_from_dict
from hyla.search.storage import load_rung_studies, open_storage
from hyla.search.study import DRIVER_STOPPED, counted, run_search
from test_search_helpers import ray_up, study_dict, wait_for_file

HOOK = '''
import os
_DIR = os.environ.get("HYLA_TEST_FAULT_DIR")
if _DIR:
    import fcntl
    import time

    import torch
    from hyla.proxy_train.proxy import run as _train

    _orig_run = _train._Loop.run

    def _next_action():
        with open(os.path.join(_DIR, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            plan_path = os.path.join(_DIR, "plan")
            plan = open(plan_path).read().split() if os.path.exists(plan_path) else []
            action = plan.pop(0) if plan else "run"
            with open(plan_path, "w") as f:
                f.write("\\n".join(plan))
            with open(os.path.join(_DIR, "log"), "a") as f:
                f.write(f"{os.getpid()} {action}\\n")
        return action

    def _run(self):
        action = _next_action()
        if action == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected by the test)")
        if action == "hang":
            with open(os.path.join(_DIR, "hang.pid.tmp"), "w") as f:
                f.write(str(os.getpid()))
            os.replace(os.path.join(_DIR, "hang.pid.tmp"), os.path.join(_DIR, "hang.pid"))
            time.sleep(600)
        return _orig_run(self)

    _train._Loop.run = _run
'''


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fault dir (hook + plan + log); one per module so every test reuses the same warm worker pool."""
    ray_up()
    d = tmp_path_factory.mktemp("faults")
    (d / "sitecustomize.py").write_text(HOOK)
    return d


def worker_env(d: Path) -> dict[str, str]:
    path = os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "HYLA_TEST_FAULT_DIR": str(d)}


def set_plan(d: Path, *actions: str) -> None:
    for name in ("hang.pid", "log"):
        (d / name).unlink(missing_ok=True)
    (d / "plan").write_text("\n".join(actions))


def log(d: Path) -> list[tuple[int, str]]:
    lines = (d / "log").read_text().split("\n") if (d / "log").exists() else []
    return [(int(p), a) for p, a in (line.split() for line in lines if line.strip())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Killer(threading.Thread):
    """SIGKILLs the worker process that reports ``hang.pid`` (it is inside a trial at that moment)."""

    def __init__(self, d: Path) -> None:
        super().__init__(daemon=True)
        self.d, self.killed, self.stop = d, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            f = self.d / "hang.pid"
            if f.exists():
                pid = int(f.read_text())
                f.unlink()
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            time.sleep(0.1)


def _trials(cfg, storage=None):
    """Rung 0's trials without the pruned repeats (proposals of a layout the rung had: never trained)."""
    studies = load_rung_studies(storage or open_storage(cfg.storage_url()), cfg.name)
    return [t for t in studies[0].get_trials() if t.state != TrialState.PRUNED] if 0 in studies else []


@pytest.mark.parametrize("retries", [1, 0])
def test_worker_sigkilled_mid_trial(tmp_path: Path, faults: Path, retries: int) -> None:
    set_plan(faults, "hang")
    cfg = study_config_from_dict(study_dict(tmp_path, f"kill{retries}", n_trials=3, retries=retries),
                                 where=f"kill{retries}.yaml")
    killer = Killer(faults)
    killer.start()
    try:
        summary = run_search(cfg, worker_env=worker_env(faults))
    finally:
        killer.stop.set()
        killer.join()
    (pid,) = killer.killed
    assert not alive(pid)
    assert (pid, "hang") in log(faults)
    trials = _trials(cfg)
    assert counted(trials) == 3 and len(trials) == 3  # the study finished its remaining trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in done:  # every completed trial is in storage with its result
        assert t.user_attrs["result"]["status"] == "ok" and len(t.values) == 3
    if retries:
        assert summary.rungs[0].retried == 1 and len(done) == 3
        # the retry ran on a fresh process, not the killed one
        assert any(p != pid and a == "run" for p, a in log(faults))
    else:
        (failed,) = [t for t in trials if t.state == TrialState.FAIL]
        assert failed.user_attrs["status"] == "worker_died"
        assert failed.user_attrs["fail_reason"].startswith("worker died 1 time(s):")
        assert len(done) == 2 and summary.rungs[0].failed == 1


def test_proxy_oom_fails_with_status_and_search_continues(tmp_path: Path, faults: Path) -> None:
    set_plan(faults, "oom")
    cfg = study_config_from_dict(study_dict(tmp_path, "oom", n_trials=3), where="oom.yaml")
    summary = run_search(cfg, worker_env=worker_env(faults))
    assert [a for _, a in log(faults)].count("oom") == 1
    trials = _trials(cfg)
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["status"] == "oom"
    assert "out of memory" in failed.user_attrs["fail_reason"] and "20.00 GiB" in failed.user_attrs["fail_reason"]
    assert failed.user_attrs["result"]["status"] == "oom"
    # the trial's run directory says the same (run_proxy wrote its result.json)
    import json

    written = json.loads((cfg.run_path / "trials" / "rung0" / f"trial{failed.number:05d}" / "result.json").read_text())
    assert written["status"] == "oom" and written["fail_reason"] == failed.user_attrs["fail_reason"]
    assert counted(trials) == 3 and sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert summary.rungs[0].failed == 1 and summary.rungs[0].completed == 2


# -- the driver itself killed ---------------------------------------------------------------------------------
def _driver(path: Path, cwd: Path, fault_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, as a user's first run would start
    if fault_dir is not None:  # the driver's local Ray workers inherit this environment
        env.update(worker_env(fault_dir))
    return subprocess.Popen([sys.executable, "-m", "hyla", "search", "run", str(path), "--no-plot"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _session_pids(sid: int) -> list[int]:
    """Processes still in session ``sid`` (the killed driver's Ray processes, if they outlive it)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


def test_driver_sigkilled_mid_study_then_rerun(tmp_path: Path) -> None:
    from hyla.search.config import load_study_config

    n = 3
    path = tmp_path / "drv.yaml"
    # one worker, so trials run one after another
    proxy = {**study_dict(tmp_path)["rungs"][0]["proxy"], "steps": 30}
    dump_yaml(study_dict(tmp_path, "drv", n_trials=n, rungs=[{"proxy": proxy}],
                         ray={"num_workers": 1, "cpus_per_worker": 1}), path)
    cfg = load_study_config(path)
    # The first trial trains normally, the second hangs inside training: killing the driver once the hung
    # worker has reported its PID leaves exactly one completed and one running trial, on any machine speed.
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir()
    (fault_dir / "sitecustomize.py").write_text(HOOK)
    set_plan(fault_dir, "run", "hang")
    proc = _driver(path, tmp_path, fault_dir)
    try:
        wait_for_file(fault_dir / "hang.pid", proc, 300, "the second trial started")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        # the killed driver's Ray processes (and the hung worker) are all in its session: reap them
        end = time.time() + 5
        while (left := _session_pids(proc.pid)) and time.time() < end:
            time.sleep(0.5)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == -signal.SIGKILL

    before = _trials(cfg)
    done = {t.number: t.values for t in before if t.state == TrialState.COMPLETE}
    stale = [t.number for t in before if t.state == TrialState.RUNNING]
    assert done and counted(before) < n
    assert stale, "the kill should leave a trial running"

    rerun = _driver(path, tmp_path)
    out, _ = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, out
    assert f"{len(stale)} trial(s) left running by a stopped driver re-enqueued" in out

    after = _trials(cfg)
    by_number = {t.number: t for t in after}
    assert len(by_number) == len(after)
    for number, values in done.items():  # completed trials kept, values unchanged
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].values == values
    for number in stale:  # failed as "driver stopped", re-queued exactly once with the same params
        assert by_number[number].state == TrialState.FAIL
        assert by_number[number].user_attrs["fail_reason"] == DRIVER_STOPPED
        (redo,) = [t for t in after if t.user_attrs.get("requeued_from") == number]
        assert redo.state == TrialState.COMPLETE
        if by_number[number].params:  # a kill between ask and suggest leaves no params: the redo samples anew
            assert redo.params == by_number[number].params
    assert counted(after) == n  # reached n_trials, stale ones not counted
    assert len(after) == n + len(stale)  # nothing counted or run twice
    assert sum(t.state == TrialState.COMPLETE for t in after) == n
