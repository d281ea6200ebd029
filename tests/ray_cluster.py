"""A throwaway two-node Ray cluster on this host for tests: ``ray start --head`` plus one ``ray start --address``.

Each node is a separate ``ray start --block`` process in its own session, so the test can SIGKILL one node's raylet
(a node lost mid-study) and reap everything either node started without touching any other Ray on the machine:
``ray stop`` is never used (it kills every Ray process of the host). Both nodes share one fresh temp dir (short,
because Ray's unix socket paths must stay under 108 bytes) and take free ports only, and the cluster address file
is written there, not to ``/tmp/ray``, so a plain ``ray.init()`` elsewhere on the host never joins this cluster.

Ray replaces a loopback ``--node-ip-address`` by the host's own address (``ray._private.services``), so both nodes
register under that address; the driver still connects through ``127.0.0.1:PORT`` and attaches to the head's raylet
(Ray prefers the head when several nodes share a host).

Loaded machines: ``ray start`` waits a fixed 30 s for its raylet to register with the GCS (``ray._private.node``)
and then gives up ("The current node timed out during startup"), which a busy 2-core laptop can exceed. Each node
runs Ray's CLI with that wait stretched to 300 s (`PATIENT_RAY_START`); a node whose ``ray start`` still exits is
reaped and started again on fresh ports while the start budget (`START_BUDGET`) lasts; and the cluster is handed
out only when the GCS lists both nodes alive with their resources (`alive_nodes`): the real condition, polled, no
fixed sleep.
"""

from __future__ import annotations

import itertools
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
#: Seconds for both nodes to come up, retries included (an idle machine needs about 15).
START_BUDGET = 300.0
#: Ray's own ``ray start`` CLI with the patience of this harness: ``ray._private.node`` waits a fixed 30 s (its
#: ``time.monotonic``) for the raylet to register, and on a loaded 2-core machine the raylet's Python agents alone
#: can take longer to start. Here that module's monotonic clock runs 10x slower, so the wait is 300 s; every other
#: part of the node (raylet, GCS, agents, health checks) is Ray's, unchanged.
PATIENT_RAY_START = """
import sys, time, types
import ray._private.node as node

class _PatientClock(types.ModuleType):
    def __getattr__(self, name):
        return getattr(time, name)

    def monotonic(self):
        return time.monotonic() / 10

node.time = _PatientClock("time")
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


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


def _command(name: str, args: list[str], temp_dir: Path, attempt: int) -> list[str]:
    """The ``ray start --block`` command line of a node's start attempt (fresh ports each time)."""
    ports = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
             f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
    return [sys.executable, "-c", PATIENT_RAY_START, "start", "--block", "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp_dir}", "--object-store-memory=80000000", "--disable-usage-stats", *ports, *args]


def _start(name: str, args: list[str], temp_dir: Path, env: dict[str, str], attempt: int) -> Node:
    log = temp_dir / f"{name}-{attempt}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_command(name, args, temp_dir, attempt), env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Node(name, proc, log)


def alive_nodes(gcs_address: str) -> dict[str, dict[str, float]]:
    """``{node id (hex): total resources}`` of the nodes the GCS lists alive ({} while it does not answer)."""
    from ray._raylet import GcsClient
    from ray.core.generated.gcs_pb2 import GcsNodeInfo

    try:
        info = GcsClient(address=gcs_address).get_all_node_info(timeout=5)
    except Exception:  # the GCS is not up yet, or too busy to answer within the timeout
        return {}
    return {node_id.hex(): dict(node.resources_total) for node_id, node in info.items()
            if node.state == GcsNodeInfo.ALIVE}


def _start_node(name: str, args: list[str], temp_dir: Path, env: dict[str, str], gcs_address: str,
                deadline: float) -> Node:
    """Start a node and return it once the GCS lists it alive; a ``ray start`` that exits first (Ray gave up on
    its raylet) is reaped and started again until ``deadline``."""
    for attempt in itertools.count(1):
        node = _start(name, args, temp_dir, env, attempt)
        while node.proc.poll() is None and time.time() < deadline:
            if node.find_node_id() and node.node_id in alive_nodes(gcs_address):
                return node
            time.sleep(0.5)
        _stop(node, grace=5)
        if time.time() >= deadline:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(temp_dir.glob(f"{name}-*.log")))
            raise RuntimeError(f"{name} did not start within {START_BUDGET:.0f} s ({attempt} attempt(s)); logs:\n{logs}")
    raise AssertionError("unreachable")


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
                timeout: float = START_BUDGET) -> Iterator[Cluster]:
    """Start a head and a worker node, yield the `Cluster` once the GCS lists both alive, then stop and reap both.

    Args:
        head_cpus, worker_cpus: logical CPUs of each node (= how many 1-CPU proxy workers each takes).
        worker_resources: ``--resources`` of the worker node (a custom resource marks it in ``ray status``).
        head_env, worker_env: extra environment of each node; its worker processes inherit it (e.g. a fault hook).
        timeout: seconds for both nodes to come up, restarts of a node whose ``ray start`` gave up included.
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))
    gcs = free_port()
    address = f"127.0.0.1:{gcs}"
    # The GCS declares a node dead after `failure_threshold` failed health checks, one per `period`. A killed raylet
    # refuses the check at once, so it is dead after about 5 s instead of Ray's 15; a live raylet that a loaded
    # machine slows keeps Ray's 10 s to answer each check (at 0.5 s, as before, the GCS declared starting nodes
    # dead under load: "The current node timed out during startup").
    head_env = clean_env(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="5",
                         RAY_health_check_timeout_ms="10000", **(head_env or {}))
    deadline = time.time() + timeout
    nodes: list[Node] = []
    try:
        nodes.append(_start_node("head", ["--head", f"--port={gcs}", "--include-dashboard=false",
                                          f"--ray-client-server-port={free_port()}", f"--num-cpus={head_cpus}"],
                                 temp_dir, head_env, address, deadline))
        nodes.append(_start_node("worker", [f"--address={address}", f"--num-cpus={worker_cpus}",
                                            f"--resources={worker_resources}"],
                                 temp_dir, clean_env(**(worker_env or {})), address, deadline))
        _check_not_default(gcs)
        yield Cluster(address, temp_dir, nodes[0], nodes[1])
    finally:
        for node in reversed(nodes):  # the worker first: it drains quickly while the GCS still answers
            _stop(node, grace=10 if node.name == "worker" else 20)
        shutil.rmtree(temp_dir, ignore_errors=True)
