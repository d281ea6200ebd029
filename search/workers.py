"""Ray actors that train proxies: one long-lived `ProxyWorker` per slot, reused across trials.

Keeping the actor alive keeps its process warm: the proxy trainer's tokenized-corpus cache, imported torch/fla and
(on GPU) Triton's compiled kernels survive from one trial to the next, which on a GPU saves minutes per trial.

A worker process that dies (segfault, OOM-killer, ``os._exit``) surfaces as ``ray.exceptions.RayActorError``; the
pool replaces the actor and the driver retries the trial (`StudyConfig.retries`). Python exceptions inside a
proxy are not deaths: ``run_proxy`` turns divergence/OOM/errors into a result status itself, and anything that
still escapes comes back as a "failed" result here.

Fault injection (used by the tests, harmless otherwise): when ``HYLA_FAULT_EXIT_FILE`` is set in a worker's
environment, each run increments the counter in that file and calls ``os._exit(3)`` while the count is below
``HYLA_FAULT_EXIT_TIMES`` (default 1) - a real process death, exactly as the OOM-killer would cause.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

import ray

from hyla.config import ConfigError

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


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


class _ProxyWorkerImpl:
    """Runs proxies in one warm process. Wrapped by ``ray.remote`` as `ProxyWorker`."""

    def __init__(self) -> None:
        # Import the trainer once per process, not once per trial.
        from hyla.proxy_train.train import ProxyConfig, run_proxy

        self._config_cls = ProxyConfig
        self._run_proxy = run_proxy
        self._configs: dict[str, Any] = {}
        self.trials_run = 0

    def run(self, layout: dict[str, Any], proxy: dict[str, Any], out_dir: str | None) -> dict[str, Any]:
        """Train one proxy (``proxy`` = resolved ProxyConfig dict); always returns a result dict."""
        import json

        from hyla.space.layout import Layout

        _fault_hook()
        self.trials_run += 1
        key = json.dumps(proxy, sort_keys=True, default=str)
        try:
            if key not in self._configs:
                self._configs[key] = self._config_cls.from_dict(proxy, where="proxy config")
            device = None
            import torch

            if not torch.cuda.is_available():
                device = "cpu"
            result = self._run_proxy(Layout.from_dict(layout), self._configs[key], out_dir=out_dir,
                                     progress=False, device=device)
            return result.to_dict()
        except ConfigError as e:  # bad input (proxy config vs layout): the driver stops the search
            return {"status": "config_error", "fail_reason": str(e)}
        except Exception as e:  # run_proxy already maps divergence/OOM; this is a bug
            tb = traceback.format_exc(limit=3).strip().splitlines()
            return {"status": "failed", "fail_reason": f"{type(e).__name__}: {e}".splitlines()[0],
                    "traceback_tail": tb[-3:]}

    def pid(self) -> int:
        return os.getpid()


ProxyWorker = ray.remote(_ProxyWorkerImpl)


class WorkerPool:
    """A fixed number of `ProxyWorker` actors; dead ones are replaced on demand."""

    def __init__(self, num_workers: int, num_cpus: float, num_gpus: float,
                 env: dict[str, str] | None = None) -> None:
        self.num_cpus = num_cpus
        # No GPU in the cluster -> CPU-only actors even if the config asks for GPUs.
        cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
        self.num_gpus = num_gpus if cluster_gpus > 0 else 0.0
        self.env = dict(env or {})
        self.actors: list[Any] = [self._new() for _ in range(num_workers)]

    def _new(self) -> Any:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "max_restarts": 0}
        if self.env:
            opts["runtime_env"] = {"env_vars": self.env}
        return ProxyWorker.options(**opts).remote()

    def replace(self, slot: int) -> None:
        """Kill (if still around) and recreate the actor in ``slot``."""
        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # already dead
            pass
        self.actors[slot] = self._new()

    def submit(self, slot: int, layout: dict[str, Any], proxy: dict[str, Any], out_dir: str | None) -> ray.ObjectRef:
        return self.actors[slot].run.remote(layout, proxy, out_dir)

    def shutdown(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []


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


def shutdown_pools() -> None:
    """Kill every cached pool's actors (e.g. before ``ray.shutdown``)."""
    for pool in _POOLS.values():
        pool.shutdown()
    _POOLS.clear()
