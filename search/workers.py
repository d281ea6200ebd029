"""Ray actors that train proxies: one long-lived `ProxyWorker` per slot, reused across trials.

Keeping the actor alive keeps its process warm: the proxy trainer's tokenized-corpus cache, imported torch/fla and
(on GPU) Triton's compiled kernels survive from one trial to the next, which on a GPU saves minutes per trial.
Every worker points Triton and Inductor at its node's kernel cache (`hyla.cache_dirs`) before fla loads, so the
workers of a machine share compiled and autotuned kernels on disk: a fresh worker (a replacement, the next
search) starts warm.

A worker process that dies (segfault, OOM-killer, ``os._exit``, or its whole node lost) surfaces as
``ray.exceptions.RayActorError``; the pool replaces the actor and the driver queues the trial again
(`StudyConfig.retries`) for whichever worker is free first. A slot only takes trials once its actor has answered
`ready` (which also tells where it runs, recorded as the trial's ``worker_node``): after a node is lost, the
cluster may have no room for the replacement, and its slot then stays idle until room appears instead of holding
the retried trial forever. Python exceptions inside a proxy are not deaths: ``run_proxy`` turns
divergence/OOM/errors into a result status itself, and anything that still escapes comes back as a "failed" result.

Trials reach the actors through the one scheduler, `hyla.search.dispatch.drive`, which the search's rung driver and
the benchmarks share. Benchmarks submit with `WorkerPool.submit_timed`, which runs a proxy like `WorkerPool.submit`
and also returns when it ran (start, end, the start of every LM step), and can hold the run before its step 0
(``before_first_step``, e.g. a start barrier so that runs sharing a GPU train together).

Fault injection (used by the tests, harmless otherwise): when ``HYLA_FAULT_EXIT_FILE`` is set in a worker's
environment, each run increments the counter in that file and calls ``os._exit(3)`` while the count is below
``HYLA_FAULT_EXIT_TIMES`` (default 1) - a real process death, exactly as the OOM-killer would cause.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from hyla.cache_dirs import kernel_caches_in_effect, use_kernel_caches
from hyla.config import ConfigError
from hyla.proxy_train.proxy.config import ProxyConfig

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
#: Actor start-ups failing in a row (none ready in between) before the search gives up: no node can run hyla.
MAX_START_FAILURES = 3


def ensure_ray(address: str | None, num_cpus: float, num_gpus: float | None = None) -> None:
    """Start a small local Ray (or connect to ``address``) unless this process is already connected."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
        return
    kwargs: dict[str, Any] = {}
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    ray.init(num_cpus=max(1, int(round(num_cpus))), include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, log_to_driver=False, logging_level="warning", **kwargs)


def _fault_hook() -> None:
    path = os.environ.get("HYLA_FAULT_EXIT_FILE")
    if not path:
        return
    p = Path(path)
    count = int(p.read_text() or 0) if p.exists() else 0
    if count < int(os.environ.get("HYLA_FAULT_EXIT_TIMES", "1")):
        p.write_text(str(count + 1))
        os._exit(3)


class _StepTimes:
    """``on_step`` of `run_proxy`: the wall time at which each LM step first begins (the first seed's steps), and
    an optional call just before step 0 (data and model built, nothing trained yet)."""

    def __init__(self, before_first_step: Callable[[], None] | None = None) -> None:
        self.times: dict[int, float] = {}
        self.before_first_step = before_first_step

    def __call__(self, step: int) -> None:
        if not self.times and self.before_first_step is not None:
            self.before_first_step()
        self.times.setdefault(int(step), time.time())

    def starts(self) -> list[float]:
        """Start times of steps 0, 1, 2, ... (the contiguous prefix recorded); ``starts[k]`` ends step ``k - 1``."""
        out: list[float] = []
        while len(out) in self.times:
            out.append(self.times[len(out)])
        return out


class _ProxyWorkerImpl:
    """Runs proxies in one warm process. Wrapped by ``ray.remote`` as `ProxyWorker`.

    Args:
        device: ``run_proxy``'s device for every trial; None = the proxy config's device when this process sees a
            GPU, else ``cpu``.
    """

    def __init__(self, device: str | None = None) -> None:
        # This node's kernel caches first (before fla loads), so that Triton compiles and autotunes a kernel once
        # per machine, not once per worker; then the trainer, imported once per process, not once per trial.
        use_kernel_caches()
        from hyla.proxy_train.proxy.run import run_proxies, run_proxy

        self._run_proxy, self._run_proxies = run_proxy, run_proxies
        self._device = device
        self.trials_run = 0

    def run(self, layout: dict[str, Any], proxy: ProxyConfig, out_dir: str | None) -> dict[str, Any]:
        """Train one proxy (``proxy``: the rung's parsed config, as the driver holds it); always returns a result
        dict."""
        return self._run(layout, proxy, out_dir, None)

    def run_timed(self, layout: dict[str, Any], proxy: ProxyConfig, out_dir: str | None,
                  before_first_step: Callable[[], None] | None = None) -> dict[str, Any]:
        """`run`, and when it happened (wall clock of this worker's host).

        Args:
            before_first_step: called once in this worker just before the first LM step (data and model built);
                the run waits for it to return. None = no call.

        Returns:
            ``{"result": <run's dict>, "t_start": <call received>, "t_end": <result ready>, "step_starts": [<start
            of step 0>, <start of step 1>, ...] (the first seed; step k ends where step k + 1 starts; empty when
            no LM step ran), "pid": <worker process id>}``.
        """
        t_start = time.time()
        steps = _StepTimes(before_first_step)
        result = self._run(layout, proxy, out_dir, steps)
        return {"result": result, "t_start": t_start, "t_end": time.time(), "step_starts": steps.starts(),
                "pid": os.getpid()}

    def run_batch(self, layouts: list[dict[str, Any]], proxy: ProxyConfig,
                  out_dirs: list[str | None]) -> list[dict[str, Any]]:
        """Score many layouts in one call (`hyla.proxy_train.proxy.run.run_proxies`: a recall family that scores
        many at once, e.g. the supernet); always one result dict per layout."""
        from hyla.space.layout import Layout

        self.trials_run += len(layouts)
        out = self._guarded(lambda device: [r.to_dict() for r in self._run_proxies(
            [Layout.from_dict(d) for d in layouts], proxy, out_dirs, progress=False, device=device)], proxy)
        return out if isinstance(out, list) else [out] * len(layouts)

    def _run(self, layout: dict[str, Any], proxy: ProxyConfig, out_dir: str | None,
             on_step: Callable[[int], None] | None) -> dict[str, Any]:
        from hyla.space.layout import Layout

        self.trials_run += 1
        return self._guarded(lambda device: self._run_proxy(Layout.from_dict(layout), proxy, out_dir=out_dir,
                                                            progress=False, device=device, on_step=on_step).to_dict(),
                             proxy)

    def _guarded(self, run: Callable[[str | None], Any], proxy: ProxyConfig) -> Any:
        """``run(device)``; bad input becomes ``config_error`` (the driver stops the search), any other escape a
        ``failed`` result (``run_proxy`` already maps divergence/OOM, so this is a bug)."""
        _fault_hook()
        try:
            if not isinstance(proxy, ProxyConfig):  # the driver parsed it once; it travels typed
                raise TypeError(f"proxy: a ProxyConfig is expected, got {type(proxy).__name__}")
            device = self._device
            import torch

            if device is None and not torch.cuda.is_available():
                device = "cpu"
            return run(device)
        except ConfigError as e:
            return {"status": "config_error", "fail_reason": str(e)}
        except Exception as e:  # noqa: BLE001
            tb = traceback.format_exc(limit=3).strip().splitlines()
            return {"status": "failed", "fail_reason": f"{type(e).__name__}: {e}".splitlines()[0],
                    "traceback_tail": tb[-3:]}

    def pid(self) -> int:
        return os.getpid()

    def kernel_caches(self) -> dict[str, str | None]:
        """This worker's Triton/Inductor cache variables (`hyla.cache_dirs.kernel_caches_in_effect`)."""
        return kernel_caches_in_effect()

    def ready(self) -> dict[str, Any]:
        """Where this worker runs: Ray node id, node IP, host name and process id (the trial's ``worker_node``)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                "hostname": socket.gethostname(), "pid": os.getpid()}


ProxyWorker = ray.remote(_ProxyWorkerImpl)


class WorkerPool:
    """A fixed number of `ProxyWorker` slots; a dead actor is replaced, and a slot is usable once its actor is ready.

    Attributes:
        actors: the actor of each slot (possibly still starting).
        nodes: `ProxyWorker.ready` of each slot's actor, None while it starts.
        starting: ``ready`` call -> slot, for actors that have not answered yet (the driver waits on these too).
    """

    def __init__(self, num_workers: int, num_cpus: float, num_gpus: float,
                 env: dict[str, str] | None = None, device: str | None = None) -> None:
        """``num_cpus``/``num_gpus``: Ray resources of each actor (a fraction of a GPU packs several on one);
        ``env``: extra environment of the actors; ``device``: every trial's device (`_ProxyWorkerImpl`)."""
        self.num_cpus = num_cpus
        self.device = device
        # No GPU in the cluster -> CPU-only actors even if the config asks for GPUs.
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        self.num_gpus = num_gpus if cluster_gpus > 0 else 0.0
        self.env = dict(env or {})
        self.actors: list[Any] = [None] * num_workers
        self.nodes: list[dict[str, Any] | None] = [None] * num_workers
        self.starting: dict[ray.ObjectRef, int] = {}
        self.start_failures = 0
        self.created = time.monotonic()
        self._announced = 0  # ready workers already reported by `startup_note`
        for slot in range(num_workers):
            self._start(slot)

    def _start(self, slot: int) -> None:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0}
        if self.env:
            opts["runtime_env"] = {"env_vars": self.env}
        self.actors[slot] = ProxyWorker.options(**opts).remote(self.device)
        self.nodes[slot] = None
        self.starting[self.actors[slot].ready.remote()] = slot

    def ready_slots(self) -> list[int]:
        """Slots whose actor has answered `ProxyWorker.ready`."""
        return [s for s, node in enumerate(self.nodes) if node is not None]

    def startup_note(self) -> str | None:
        """``proxy workers: k/N ready after X s`` when the first and when the last of the pool's initial workers
        become ready (call after `started`); None otherwise, and always once all N have been reported."""
        ready, total = len(self.ready_slots()), len(self.actors)
        if self._announced >= total or ready <= self._announced or ready not in (1, total):
            return None
        self._announced = ready
        return f"proxy workers: {ready}/{total} ready after {time.monotonic() - self.created:.1f} s"

    def started(self, ref: ray.ObjectRef) -> int | None:
        """Take the answer of a ``ready`` call from `starting`: the slot if its actor is up, else None (restarted).

        Raises:
            ConfigError: `MAX_START_FAILURES` start-ups failed in a row (e.g. hyla is not installed on the nodes);
                the pool is shut down first.
        """
        slot = self.starting.pop(ref)
        try:
            self.nodes[slot] = ray.get(ref)
        except ray.exceptions.RayError as e:
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                msg = str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
                self.shutdown()  # a later search builds a fresh pool
                raise ConfigError(f"ray: {self.start_failures} proxy workers in a row failed to start ({msg}); every "
                                  "Ray node needs hyla and its dependencies installed") from None
            self._start(slot)
            return None
        self.start_failures = 0
        return slot

    def replace(self, slot: int) -> None:
        """Kill (if still around) and recreate the actor in ``slot``; the slot is usable again once it is ready."""
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # already dead
            pass
        self.starting = {r: s for r, s in self.starting.items() if s != slot}
        self._start(slot)

    def submit(self, slot: int, layout: dict[str, Any], proxy: ProxyConfig, out_dir: str | None) -> ray.ObjectRef:
        return self.actors[slot].run.remote(layout, proxy, out_dir)

    def submit_batch(self, slot: int, layouts: list[dict[str, Any]], proxy: ProxyConfig,
                     out_dirs: list[str | None]) -> ray.ObjectRef:
        """Many layouts in one call (`_ProxyWorkerImpl.run_batch`): the answer is one result dict per layout."""
        return self.actors[slot].run_batch.remote(layouts, proxy, out_dirs)

    def submit_timed(self, slot: int, layout: dict[str, Any], proxy: ProxyConfig, out_dir: str | None,
                     before_first_step: Callable[[], None] | None = None) -> ray.ObjectRef:
        """`submit` through `_ProxyWorkerImpl.run_timed`: the answer also says when the run and each of its LM
        steps started (``before_first_step`` is pickled to the worker and called there before step 0)."""
        return self.actors[slot].run_timed.remote(layout, proxy, out_dir, before_first_step)

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors, self.nodes, self.starting = [], [], {}


_POOLS: dict[tuple, WorkerPool] = {}


def get_pool(num_workers: int, num_cpus: float, num_gpus: float, env: dict[str, str] | None = None) -> WorkerPool:
    """A warm pool for these settings, reused by later searches in the same driver process (one pool at a time).

    Worker start-up (importing torch/fla, reading the corpus, on GPU compiling kernels) costs far more than a
    small proxy, so a notebook or test session running several searches keeps its actors.
    """
    key = (num_workers, num_cpus, num_gpus, tuple(sorted((env or {}).items())))
    pool = _POOLS.get(key)
    if pool is None or not pool.actors:
        # Other pools hold the cluster's CPUs/GPUs: their actors would starve the new ones of resources.
        shutdown_pools()
        pool = _POOLS[key] = WorkerPool(num_workers, num_cpus, num_gpus, env=env)
    return pool


def start_pool(r: Any, console: Any = None, env: dict[str, str] | None = None) -> WorkerPool:
    """Start (or connect to) Ray and get the pool for ``r`` (a `hyla.search.config.RayConfig`), saying on
    ``console`` what is starting: a first trial only finishes once Ray and a worker's imports (torch, the proxy
    trainer) are up, which takes a while. The driver then reports the workers ready (`WorkerPool.startup_note`)."""
    say = console.print if console is not None else (lambda *a, **k: None)
    if not ray.is_initialized():
        t0 = time.monotonic()
        cpus = max(1, round(r.num_workers * r.cpus_per_worker))
        say(f"connecting to Ray at {r.address} ..." if r.address else f"starting Ray (local, {cpus} CPUs) ...")
        ensure_ray(r.address, num_cpus=r.num_workers * r.cpus_per_worker)
        say(f"Ray ready after {time.monotonic() - t0:.1f} s")
    ensure_ray(r.address, num_cpus=r.num_workers * r.cpus_per_worker)  # a no-op when connected (sets RAY_ENV)
    pool = get_pool(r.num_workers, r.cpus_per_worker, r.gpus_per_worker, env=env)
    each = f"{r.cpus_per_worker:g} CPU" + (f", {pool.num_gpus:g} GPU" if pool.num_gpus else "")
    if pool.ready_slots():
        say(f"reusing {len(pool.ready_slots())} warm proxy worker(s) ({each} each)")
    else:
        say(f"starting {r.num_workers} proxy worker(s) ({each} each, importing torch) ...")
    return pool


def shutdown_pools() -> None:
    """Kill every cached pool's actors (e.g. before ``ray.shutdown``)."""
    for pool in _POOLS.values():
        pool.shutdown()
    _POOLS.clear()
