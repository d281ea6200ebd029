"""`hyla search run --address` against a real two-node Ray cluster on this host, losing a node mid-trial.

`ray_cluster` starts ``ray start --head`` and ``ray start --address=...`` as separate processes (one logical CPU
each, so the study's two 1-CPU workers land one per node). The study runs as a separate ``hyla search run``
process, as a user would run it, with the journal storage on a path every node sees (here: the same disk).

A test-only ``sitecustomize`` hook (below), put on both nodes' ``PYTHONPATH`` (Ray workers inherit their raylet's
environment), wraps the proxy training loop and makes the interleaving the same on any machine speed. It patches
the loop only when a process imports it (a post-import hook): every Python process of a node runs sitecustomize,
and importing the trainer (torch, fla) in each of them, Ray's own agents included, made a node start take minutes
on a loaded machine, past Ray's 30 s wait for its raylet ("The current node timed out during startup"):

- on the worker node, the first trial trains normally; the second writes the process id to ``hang.pid`` and sleeps,
  i.e. it is mid-trial when the test SIGKILLs that node's raylet;
- on the head, the first trial waits (at most 400 s) until the worker node hangs, so the worker node has
  finished exactly one trial by then.

Every wait is on its real condition (a file appearing, the study's process exiting) with a deadline generous
enough for a loaded 2-core machine; the cluster itself comes up through `ray_cluster`'s restarts.

Then the lost trial must be retried on the head and the study must finish with every trial complete.

The last test runs in this process's local Ray: workers that cannot import hyla (a node without it installed) stop
the search with a one-line error instead of being restarted forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hyla.config import ConfigError, dump_yaml
from hyla.search.config import load_study_config, study_config_from_dict
from hyla.search.storage import load_rung_studies, open_storage
from hyla.search.study import counted, run_search
from hyla.search.workers import shutdown_pools
from ray_cluster import clean_env, ray_cluster
from test_search_helpers import ray_up, study_dict, wait_for_file

HOOK = '''
import os
import sys

_DIR, _ROLE = os.environ.get("HYLA_TEST_CLUSTER_DIR"), os.environ.get("HYLA_TEST_CLUSTER_ROLE")


def _patch(train):
    import time

    _orig_run = train._Loop.run

    def _run(self):
        with open(os.path.join(_DIR, "log"), "a") as f:
            f.write(f"{_ROLE} {os.getpid()}\\n")
        hang = os.path.join(_DIR, "hang.pid")
        if _ROLE == "worker":
            with open(os.path.join(_DIR, "log")) as f:
                runs = sum(line.startswith("worker ") for line in f)
            if runs == 2:  # the worker node's second trial: report, then hang until the node is killed
                with open(hang + ".tmp", "w") as f:
                    f.write(str(os.getpid()))
                os.replace(hang + ".tmp", hang)
                time.sleep(600)
        else:
            deadline = time.time() + 400
            while not os.path.exists(hang) and time.time() < deadline:
                time.sleep(0.1)
        return _orig_run(self)

    train._Loop.run = _run


if _DIR and _ROLE:  # every Python process of the node runs this: patch only where the proxy trainer is imported
    import importlib.abc
    import importlib.machinery

    class _PatchTrain(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "hyla.proxy_train.proxy.run":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                exec_module = spec.loader.exec_module
                spec.loader.exec_module = lambda module: (exec_module(module), _patch(module))[0]
            return spec

    sys.meta_path.insert(0, _PatchTrain())
'''


def _node_env(hook_dir: Path, role: str) -> dict[str, str]:
    path = os.pathsep.join([str(hook_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "HYLA_TEST_CLUSTER_DIR": str(hook_dir), "HYLA_TEST_CLUSTER_ROLE": role}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_dead(pid: int, timeout: float) -> bool:
    end = time.time() + timeout
    while _alive(pid) and time.time() < end:
        time.sleep(0.2)
    return not _alive(pid)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_search_on_two_node_cluster_survives_losing_a_node(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from hyla.cli import main

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    n = 6
    path = tmp_path / "cluster.yaml"
    dump_yaml(study_dict(tmp_path, "cluster", n_trials=n, ray={"num_workers": 2, "cpus_per_worker": 1}), path)
    with ray_cluster(head_env=_node_env(hook, "head"), worker_env=_node_env(hook, "worker")) as cluster:
        drv = subprocess.Popen([sys.executable, "-m", "hyla", "search", "run", str(path), "--no-plot",
                                "--address", cluster.address], cwd=tmp_path, env=clean_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            wait_for_file(hook / "hang.pid", drv, 420, "the worker node's second trial started")
            hung = int((hook / "hang.pid").read_text())
            raylet = cluster.kill_raylet(cluster.worker)
            try:
                out, _ = drv.communicate(timeout=300)  # about 20 s once the node is gone, on an idle machine
            except subprocess.TimeoutExpired:
                pytest.fail("the study did not finish within 300 s of losing the worker node")
        finally:
            if drv.poll() is None:
                os.killpg(drv.pid, signal.SIGKILL)
                drv.wait()
        assert drv.returncode == 0, out
        assert _wait_dead(raylet, 10) and _wait_dead(hung, 30), "the lost node's raylet or hung worker lives on"
        head_id, worker_id = cluster.head.node_id, cluster.worker.node_id
    assert f"rung 0: {n} completed" in out and "0 failed, 1 worker retries" in out, out

    (study,) = load_rung_studies(open_storage(load_study_config(path).storage_url()), "cluster").values()
    trials = [t for t in study.get_trials() if t.state != TrialState.PRUNED]  # pruned: repeats, never trained
    assert len(trials) == n and counted(trials) == n
    assert all(t.state == TrialState.COMPLETE for t in trials), "a trial was lost with the node"
    trained = [t for t in trials if "reused_from" not in t.user_attrs]
    nodes = {t.number: t.user_attrs["worker_node"]["node_id"] for t in trained}
    assert set(nodes.values()) == {head_id, worker_id}  # trials landed on both nodes
    assert sum(v == worker_id for v in nodes.values()) == 1  # the worker node's first trial, before the kill
    (retried,) = [t for t in trials if t.user_attrs.get("worker_deaths")]
    (death,) = retried.user_attrs["worker_deaths"]
    assert death["node_id"] == worker_id and death["pid"] == hung
    assert nodes[retried.number] == head_id and retried.user_attrs["result"]["status"] == "ok"
    assert (tmp_path / "cluster" / "trials" / "rung0" / f"trial{retried.number:05d}" / "result.json").exists()

    assert main(["search", "status", str(path)]) == 0
    shown = " ".join(capsys.readouterr().out.split())  # rich wraps long lines at the terminal width
    assert f"node {head_id[:8]}" in shown and f"node {worker_id[:8]}" in shown
    assert f"worker deaths: 1 in trial(s) {retried.number} " in shown


NO_HYLA = '''
import sys


class _NoHyla:
    def find_spec(self, name, path=None, target=None):
        if name == "hyla" or name.startswith("hyla."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoHyla())
'''


def test_workers_without_hyla_stop_the_search(tmp_path: Path) -> None:
    ray_up()
    blocker = tmp_path / "no_hyla"  # the worker processes cannot import hyla, as on a node without it installed
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_HYLA)
    one = {"num_workers": 1, "cpus_per_worker": 1}
    cfg = study_config_from_dict(study_dict(tmp_path, "nohyla", n_trials=1, ray=one), where="nohyla.yaml")
    try:
        with pytest.raises(ConfigError, match=r"^ray: 3 proxy workers in a row failed to start \(.+\); every Ray "
                                              r"node needs hyla") as info:
            run_search(cfg, worker_env={"PYTHONPATH": str(blocker)})
    finally:
        shutdown_pools()  # the next module builds its own pool
    print(info.value)
    assert len(str(info.value).splitlines()) == 1
