"""A throwaway two-node Ray cluster on this host for tests: ``ray start --head`` plus one ``ray start --address``.

Each node is a separate ``ray start --block`` process in its own session, so the test can SIGKILL one node's raylet
(a node lost mid-study) and reap everything either node started without touching any other Ray on the machine:
``ray stop`` is never used (it kills every Ray process of the host). Both nodes share one fresh temp dir (short,
because Ray's unix socket paths must stay under 108 bytes) and take free ports only, and the cluster address file
is written there, not to ``/tmp/ray``, so a plain ``ray.init()`` elsewhere on the host never joins this cluster.

Ray replaces a loopback ``--node-ip-address`` by the host's own address (``ray._private.services``), so both nodes
register under that address; the driver still connects through ``127.0.0.1:PORT`` and attaches to the head's raylet
(Ray prefers the head when several nodes share a host).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: Environment of every Ray process the tests start (ARCHITECTURE.md), without a RAY_ADDRESS that points elsewhere.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a Ray process of the test cluster (``extra`` wins)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, **RAY_ENV, **extra}


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a node's ``ray start`` and everything it spawned)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid and _state(int(d.name)) != "Z":
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@dataclass
class Node:
    """One ``ray start --block`` process and what it reported."""

    name: str
    proc: subprocess.Popen
    log: Path
    node_id: str = ""  # hex node id (the raylet's --node_id), known once the raylet runs

    def raylet_pid(self) -> int | None:
        for pid in session_pids(self.proc.pid):
            args = _cmdline(pid)
            if args and Path(args[0]).name == "raylet":
                return pid
        return None

    def find_node_id(self) -> str:
        pid = self.raylet_pid()
        for arg in _cmdline(pid) if pid else []:
            if arg.startswith("--node_id="):
                self.node_id = arg.split("=", 1)[1]
        return self.node_id


@dataclass
class Cluster:
    """A running two-node cluster: connect with ``address``; ``head`` and ``worker`` are its nodes."""

    address: str
    temp_dir: Path
    head: Node
    worker: Node
    killed: list[int] = field(default_factory=list)

    def kill_raylet(self, node: Node) -> int:
        """SIGKILL ``node``'s raylet, as a machine that drops off the network or is preempted; returns its PID."""
        pid = node.raylet_pid()
        if pid is None:
            raise RuntimeError(f"{node.name}: no raylet running; log:\n{node.log.read_text()[-2000:]}")
        os.kill(pid, signal.SIGKILL)
        self.killed.append(pid)
        return pid


def _start(name: str, args: list[str], temp_dir: Path, env: dict[str, str]) -> Node:
    ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    log = temp_dir / f"{name}.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--node-ip-address=127.0.0.1",
           f"--temp-dir={temp_dir}", "--object-store-memory=80000000", "--disable-usage-stats", *ports, *args]
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return Node(name, proc, log)


def _wait_started(node: Node, deadline: float) -> None:
    """Until ``ray start`` reports the node up (registered with the GCS) and its raylet's node id is known."""
    while "Ray runtime started" not in node.log.read_text() or not node.find_node_id():
        if node.proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{node.name} did not start; log:\n{node.log.read_text()[-3000:]}")
        time.sleep(0.2)


def _check_not_default(gcs_port: int) -> None:
    """Refuse to go on if the host's default cluster file names this cluster (a plain ``ray.init()`` would join)."""
    from ray._common.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    if path.exists() and path.read_text().strip().endswith(f":{gcs_port}"):
        raise RuntimeError(f"{path} points at the test cluster (port {gcs_port}): other Ray users would join it")


def _stop(node: Node, grace: float) -> None:
    """SIGTERM the node's ``ray start`` (it stops its processes), then SIGKILL whatever is left in its session."""
    if node.proc.poll() is None:
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    end = time.time() + 5
    while (left := session_pids(node.proc.pid)) and time.time() < end:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    if node.proc.poll() is None:
        node.proc.kill()
    node.proc.wait(timeout=10)


@contextmanager
def ray_cluster(head_cpus: int = 1, worker_cpus: int = 1, worker_resources: str = '{"hyla_test_worker": 1}',
                head_env: dict[str, str] | None = None, worker_env: dict[str, str] | None = None,
                timeout: float = 60.0) -> Iterator[Cluster]:
    """Start a head and a worker node, yield the `Cluster` once both raylets run, then stop and reap both.

    Args:
        head_cpus, worker_cpus: logical CPUs of each node (= how many 1-CPU proxy workers each takes).
        worker_resources: ``--resources`` of the worker node (a custom resource marks it in ``ray status``).
        head_env, worker_env: extra environment of each node; its worker processes inherit it (e.g. a fault hook).
        timeout: seconds for each node to come up.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    gcs = free_port()
    # The GCS declares a node dead after `failure_threshold` missed health checks: about 2 s instead of Ray's 30 s.
    head_env = clean_env(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="4",
                         RAY_health_check_timeout_ms="500", **(head_env or {}))
    nodes: list[Node] = []
    try:
        nodes.append(_start("head", ["--head", f"--port={gcs}", "--include-dashboard=false",
                                     f"--ray-client-server-port={free_port()}", f"--num-cpus={head_cpus}"],
                            temp_dir, head_env))
        _wait_started(nodes[0], time.time() + timeout)
        nodes.append(_start("worker", [f"--address=127.0.0.1:{gcs}", f"--num-cpus={worker_cpus}",
                                       f"--resources={worker_resources}"],
                            temp_dir, clean_env(**(worker_env or {}))))
        _wait_started(nodes[1], time.time() + timeout)
        _check_not_default(gcs)
        yield Cluster(f"127.0.0.1:{gcs}", temp_dir, nodes[0], nodes[1])
    finally:
        for node in reversed(nodes):  # the worker first: it drains quickly while the GCS still answers
            _stop(node, grace=10 if node.name == "worker" else 20)
        shutil.rmtree(temp_dir, ignore_errors=True)
