"""Shared plumbing of the search-throughput benchmarks (warm start, packing, paper grid).

The GPU machine has no Ray, so these scripts drive ``run_proxy`` in long-lived worker processes of their own:
`WorkerPool` spawns N processes (``spawn`` start method: CUDA cannot be forked), each with its own job queue and
one shared result queue. A worker imports torch/fla once and then runs any number of proxy trials, which is the
whole point: Triton compiles and autotunes a kernel once per process, so only the first trial of a worker pays it.

Time to the first completed step is measured on the real ``run_proxy`` through its ``on_step`` callback, called
as every step begins, right after the previous step's ``float(loss)`` (which synchronises the GPU). `StepProbe`
records the wall time of each step's first call, so ``times[1]`` is the end of step 0 and ``times[k]`` the end of
step ``k - 1``.

Start barrier. A job submitted with ``sync=True`` stops at its first ``on_step`` call (data and model built, no
step run yet), reports ``at_start`` and waits for `WorkerPool.release`: runs meant to share a device (packing)
then begin their step 0 together, however long each took to set up.

Call `setup_env` before anything imports triton or fla (it sets the compile caches the workers share).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import queue
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: FLA_CACHE_MODE value we default to: looks up tuned kernel configs under FLA_CONFIG_DIR when some exist there
#: and falls back to Triton autotuning (cached on disk through TRITON_CACHE_AUTOTUNING) when none match.
FLA_CACHE_MODE_DEFAULT = "fuzzy"


def log(msg: str) -> None:
    """Timestamped progress line, flushed (the lead watches these through a 10-minute command's tail)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_env(triton_cache: str | None = None) -> dict[str, str]:
    """Set the compile-cache environment (inherited by spawned workers); returns what is in effect.

    ``TRITON_CACHE_DIR`` (default /tmp/hyla_triton) keeps compiled kernels across processes and commands;
    ``TRITON_CACHE_AUTOTUNING=1`` stores autotuning results there too; ``FLA_CACHE_MODE`` (fla 0.6.0,
    ``fla/ops/utils/cache.py``) reads pre-tuned configs from ``FLA_CONFIG_DIR`` when present. Values already in
    the environment win, except ``triton_cache`` when given.
    """
    if triton_cache:
        os.environ["TRITON_CACHE_DIR"] = triton_cache
    os.environ.setdefault("TRITON_CACHE_DIR", "/tmp/hyla_triton")
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    os.environ.setdefault("FLA_CACHE_MODE", FLA_CACHE_MODE_DEFAULT)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    Path(os.environ["TRITON_CACHE_DIR"]).mkdir(parents=True, exist_ok=True)
    keys = ("TRITON_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "FLA_CACHE_MODE", "FLA_CONFIG_DIR")
    return {k: os.environ[k] for k in keys if k in os.environ}


def machine_info(device: str) -> dict[str, Any]:
    """GPU name, library versions, date and host of this run (stored in every result JSON)."""
    import torch

    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "device": device,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("TRITON_", "FLA_", "CUDA_VISIBLE"))},
    }
    from importlib import metadata

    # package metadata, not imports: importing fla costs 10-30 s of Triton decorator set-up
    for mod, dists in (("triton", ("triton",)), ("fla", ("fla-core", "flash-linear-attention")),
                       ("transformers", ("transformers",)), ("tilelang", ("tilelang",))):
        info[mod] = "unavailable"
        for dist in dists:
            try:
                info[mod] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cuda"] = torch.version.cuda
    return info


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (a command killed mid-write leaves the previous file intact)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(p)
    return p


def read_json(path: str | Path) -> Any:
    """The JSON at ``path``, or None when the file does not exist."""
    p = Path(path)
    return json.loads(p.read_text()) if p.exists() else None


def default_out(name: str) -> Path:
    """``benchmarks/results/<name>.json``."""
    return RESULTS_DIR / f"{name}.json"


class Deadline:
    """A wall-clock cap measured from construction (``max_seconds`` None or <= 0 means no cap)."""

    def __init__(self, max_seconds: float | None) -> None:
        self.t0 = time.time()
        self.max_seconds = max_seconds if max_seconds and max_seconds > 0 else None

    def elapsed(self) -> float:
        return time.time() - self.t0

    def left(self) -> float:
        """Seconds left (inf without a cap)."""
        return float("inf") if self.max_seconds is None else self.max_seconds - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as YAML scalars (``3`` -> 3, ``none`` -> None)."""
    import yaml

    from hyla.config import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: {item!r} is not allowed; expected KEY=VALUE, e.g. eval_batches=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def proxy_config(proxy: str, steps: int | None = None, tokens: int | None = None,
                 sets: dict[str, Any] | None = None) -> Any:
    """A ``ProxyConfig`` from a preset/YAML with a step or token budget and field overrides."""
    from hyla.config import ConfigError
    from hyla.proxy_train.train import ProxyConfig

    if steps is not None and tokens is not None:
        raise ConfigError(f"budget: give --steps ({steps}) or --budget-tokens ({tokens}), not both")
    data = ProxyConfig.load(proxy).to_dict()
    data.update(sets or {})
    if steps is not None or tokens is not None:
        data["steps"], data["tokens"] = steps, tokens
    return ProxyConfig.from_dict(data, where=f"proxy {proxy}")


def check_device(device: str) -> None:
    """ConfigError (one line) now, in the parent, rather than one failed trial per worker later."""
    from hyla.proxy_train.train import resolve_device

    resolve_device(device)


def load_layouts(names: list[str], scale: str) -> list[Any]:
    """Layouts from preset names (``gla-6:1``, scale ``scale`` when none is given) or layout YAML files."""
    from hyla.space.presets import load_layout

    return [load_layout(n, default_scale=scale) for n in names]


# ------------------------------------------------------------------------------------------------ worker side

class StepProbe:
    """Records the wall time at which each training step of ``run_proxy`` begins: pass it as ``on_step``."""

    def __init__(self, before_first_step: Any = None) -> None:
        self.times: dict[int, float] = {}
        self.before_first_step = before_first_step  # called once, before step 0 is timed (the start barrier)

    def __call__(self, step: int) -> None:
        if not self.times and self.before_first_step is not None:
            self.before_first_step()
        self.times.setdefault(int(step), time.time())  # the first seed's steps

    def step_starts(self) -> list[float]:
        """Start times of steps 0, 1, 2, ... (only the contiguous prefix that was recorded)."""
        out, k = [], 0
        while k in self.times:
            out.append(self.times[k])
            k += 1
        return out


def run_job(job: dict[str, Any], before_first_step: Any = None) -> dict[str, Any]:
    """Run one proxy trial described by ``job`` and return its result plus timing marks (worker side).

    ``before_first_step``: called once when the trial is about to run its step 0 (the start barrier).
    """
    from hyla.proxy_train.train import ProxyConfig, run_proxy
    from hyla.space.layout import Layout

    t_recv = time.time()
    layout = Layout.from_dict(job["layout"])
    config = ProxyConfig.from_dict(job["config"])
    probe = StepProbe(before_first_step)
    result = run_proxy(layout, config, out_dir=job.get("out_dir"), progress=False, device=job["device"],
                       overwrite=bool(job.get("out_dir")), on_step=probe)
    t_end = time.time()
    starts = probe.step_starts()
    return {"id": job["id"], "result": result.to_dict(), "t_submit": job["t_submit"], "t_recv": t_recv,
            "t_end": t_end, "step_starts": starts, "probe": bool(starts),
            "t_first_step": starts[1] if len(starts) > 1 else None, "pid": os.getpid()}


def _worker_main(wid: int, jobs: Any, results: Any, device: str) -> None:
    """Worker loop: announce readiness once imports are done, then run jobs until a None arrives."""
    t0 = time.time()
    import torch  # noqa: F401  (pay the import before reporting ready)

    import hyla.proxy_train.train  # noqa: F401  (the import the first trial would otherwise pay)
    try:
        import fla  # noqa: F401  (run_proxy imports it lazily: 10-30 s of Triton decorators, once per process)
    except ImportError:
        pass
    if device.startswith("cuda"):
        torch.cuda.init()
    results.put(("ready", wid, None, {"import_s": time.time() - t0, "pid": os.getpid()}))
    while True:
        job = jobs.get()
        if job is None:
            return
        def wait_for_release(job_id: str = job["id"]) -> None:
            results.put(("at_start", wid, job_id, {}))
            jobs.get()  # the release token of WorkerPool.release

        try:
            out = run_job(job, wait_for_release if job.get("sync") else None)
            results.put(("result", wid, job["id"], out))
        except BaseException as e:  # noqa: BLE001 - ConfigError etc.: report it, keep the worker alive
            results.put(("error", wid, job["id"], {"error": f"{type(e).__name__}: {e}",
                                                    "traceback": traceback.format_exc()[-2000:]}))


class WorkerPool:
    """N long-lived proxy workers (spawned processes), each with its own job queue and one shared result queue."""

    def __init__(self, n: int, device: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.device = device
        self.results = ctx.Queue()
        self.queues = [ctx.Queue() for _ in range(n)]
        self.procs = [ctx.Process(target=_worker_main, args=(i, q, self.results, device), daemon=True)
                      for i, q in enumerate(self.queues)]
        self.t_start = time.time()
        for p in self.procs:
            p.start()
        self.ready: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.procs)

    def wait_ready(self, deadline: Deadline) -> bool:
        """Block until every worker has imported its libraries (False if the deadline hit first)."""
        while len(self.ready) < len(self.procs):
            msg = self.get(deadline)
            if msg is None:
                return False
            kind, wid, _, payload = msg
            if kind == "ready":
                payload["ready_s"] = time.time() - self.t_start
                self.ready[wid] = payload
        return True

    def submit(self, wid: int, job_id: str, layout: Any, config: Any, out_dir: str | None = None,
               sync: bool = False) -> None:
        """Send one trial to worker ``wid`` (stamped with the submission time); ``sync``: hold it at the start
        barrier (an ``at_start`` message) until `release`."""
        self.queues[wid].put({"id": job_id, "layout": layout.to_dict(), "config": config.to_dict(),
                              "device": self.device, "out_dir": out_dir, "t_submit": time.time(), "sync": sync})

    def release(self, wids: Any) -> None:
        """Let the ``sync`` trials waiting at the start barrier on workers ``wids`` begin their step 0."""
        for wid in wids:
            self.queues[wid].put({"release": True})

    def get(self, deadline: Deadline, wait: float | None = None, poll: float = 1.0
            ) -> tuple[str, int, Any, Any] | None:
        """Next message ``(kind, worker, job_id, payload)``; None at the deadline, after ``wait`` seconds (when
        given) or once every worker has died."""
        until = time.time() + wait if wait is not None else float("inf")
        while not deadline.expired() and time.time() < until:
            try:
                return self.results.get(timeout=min(poll, max(0.05, deadline.left())))
            except queue.Empty:
                if not any(p.is_alive() for p in self.procs):
                    return None
        return None

    def alive(self, wid: int) -> bool:
        return self.procs[wid].is_alive()

    def exitcode(self, wid: int) -> int | None:
        return self.procs[wid].exitcode

    def close(self, grace: float = 10.0) -> None:
        """Ask workers to exit; terminate those still busy after ``grace`` seconds (cap reached mid-trial)."""
        for q in self.queues:
            try:
                q.put(None)
            except Exception:  # noqa: BLE001 - a dead worker's queue may be broken; terminate handles it
                pass
        end = time.time() + grace
        for p in self.procs:
            p.join(timeout=max(0.0, end - time.time()))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)


def add_common_args(ap: Any, name: str) -> None:
    """Flags every benchmark script shares."""
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (CPU smoke runs and tests)")
    ap.add_argument("--max-seconds", type=float, default=540.0,
                    help="wall-clock cap; stops cleanly and writes partial results (default 540, fits 10 min)")
    ap.add_argument("--out", default=str(default_out(name)), help="result JSON path")
    ap.add_argument("--triton-cache", default=None, help="TRITON_CACHE_DIR (default $TRITON_CACHE_DIR or "
                                                         "/tmp/hyla_triton)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a ProxyConfig field (repeatable), e.g. --set eval_batches=1")


def main_guard(fn: Any) -> None:
    """Run ``fn()``; a ConfigError becomes one ``error:`` line and exit status 2 (as the hyla CLI does)."""
    from hyla.config import ConfigError

    try:
        sys.exit(fn() or 0)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
