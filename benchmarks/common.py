"""Shared plumbing of the benchmarks: arguments, result files, and proxy trials on the product's Ray workers.

Proxies run on the actors of ``hyla.search.workers`` (`WorkerPool`, the ones ``hyla search run`` uses), started by
`start_workers` on a local Ray (``ensure_ray``): N long-lived workers split the machine's cores and, on CUDA, one
GPU (``1/N`` of it each). A worker imports torch once and then runs any number of proxy trials, which is the whole
point: Triton compiles and autotunes a kernel once per process, so only the first trial of a worker pays it.

`run_timed` hands a list of trials to the search's own scheduler (``hyla.search.dispatch.drive``: free workers,
oldest job first, a dead worker's actor replaced) and reports each finished one as a message ``(kind, slot,
job_id, payload)``: ``("result", ...)`` with the ``ProxyResult`` dict under ``"result"`` plus when it ran, or
``("error", ...)`` with a one-line ``"error"`` (bad input, an escaped exception, a dead worker). Timing comes from
`WorkerPool.submit_timed`: ``t_submit`` (driver), ``t_recv``/``t_end`` (worker) and ``step_starts``, the wall time
at which each LM step of ``run_proxy`` began (its ``on_step`` callback, right after the previous step's
``float(loss)``, which synchronises the GPU), so ``step_starts[1]`` is the end of step 0 (``t_first_step``).

A job's ``before_first_step`` (a picklable callable) runs in the worker once data and model are built, before
step 0: runs meant to share a device (packing) wait there at a start barrier.

Call `setup_env` before anything imports triton or fla and before `start_workers` (the local Ray, and so every
worker, inherits the compile caches it sets).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: FLA_CACHE_MODE value we default to: looks up tuned kernel configs under FLA_CONFIG_DIR when some exist there
#: and falls back to Triton autotuning (cached on disk through TRITON_CACHE_AUTOTUNING) when none match.
FLA_CACHE_MODE_DEFAULT = "fuzzy"
#: training tokens/s of one 24 x 256 proxy per layer kind on an H100 (three packed, results/small_proxies_h100.json;
#: attention 294k from a measurement made outside this repository): only the *order* matters, for scheduling
#: the slowest layouts first
KIND_TOKENS_PER_S = {"mamba2": 34e3, "deltanet": 35e3, "gdn": 80e3, "hgrn2": 109e3, "retnet": 145e3, "gla": 168e3,
                     "hgrn": 244e3, "attn": 294e3}


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


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file, [] when it does not exist (a torn last line from a killed command is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def config_key(config: Any) -> str:
    """Short hash of a proxy config: records of another config (budget, seed, variant) are never mixed up."""
    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:12]


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
    """``["key=value", ...]`` -> dict, values parsed as YAML scalars (``3`` -> 3, ``none`` -> None); a dotted key
    (``recall.steps=50``) sets a field of a nested mapping (`apply_sets`)."""
    import yaml

    from hyla.config import ConfigError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: {item!r} is not allowed; expected KEY=VALUE, e.g. eval_batches=1")
        out[key.strip()] = yaml.safe_load(value)
    return out


def apply_sets(data: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """``data`` with ``sets`` applied: ``key`` replaces a field, ``outer.key`` a field of the mapping ``outer``
    (e.g. ``recall.steps``: a field of the proxy's recall family)."""
    from hyla.config import ConfigError

    out = dict(data)
    for key, value in sets.items():
        outer, dot, inner = key.partition(".")
        if not dot:
            out[key] = value
        elif isinstance(out.get(outer), dict):
            out[outer] = {**out[outer], inner: value}
        else:
            raise ConfigError(f"--set {key}: {outer!r} is not a mapping in this proxy config")
    return out


def proxy_config(proxy: str, steps: int | None = None, tokens: int | None = None,
                 sets: dict[str, Any] | None = None, quick: bool = False) -> Any:
    """A ``ProxyConfig`` from a preset/YAML with a step or token budget and field overrides (`apply_sets`);
    ``quick``: the least evaluation first (`quick_eval`), the overrides win over it."""
    from hyla.config import ConfigError
    from hyla.proxy_train.proxy.config import ProxyConfig

    if steps is not None and tokens is not None:
        raise ConfigError(f"budget: give --steps ({steps}) or --budget-tokens ({tokens}), not both")
    base = ProxyConfig.load(proxy)
    data = apply_sets((quick_eval(base) if quick else base).to_dict(), sets or {})
    if steps is not None or tokens is not None:
        data["steps"], data["tokens"] = steps, tokens
    return ProxyConfig.from_dict(data, where=f"proxy {proxy}")


def probe_config(proxy: str) -> Any:
    """The recall probe's config of a proxy preset/YAML whose ``recall`` is ``family: probe``."""
    from hyla.config import ConfigError
    from hyla.proxy_train.probe.config import RecallProbeConfig

    recall = proxy_config(proxy).recall
    if not isinstance(recall, RecallProbeConfig):
        raise ConfigError(f"--proxy {proxy}: its recall is not the probe (recall: {{family: probe, ...}})")
    return recall


def quick_eval(config: Any) -> Any:
    """``config`` with the least evaluation (one LM batch, 8 examples per suite level; a probe keeps its exam):
    for benchmarks that time training, not scoring."""
    import dataclasses

    suite = config.suite
    recall = dataclasses.replace(suite, eval_examples=8) if suite is not None else config.recall
    return dataclasses.replace(config, eval_batches=1, recall=recall)


def check_device(device: str) -> None:
    """ConfigError (one line) now, in the parent, rather than one failed trial per worker later."""
    from hyla.proxy_train.proxy.run import resolve_device

    resolve_device(device)


def load_layouts(names: list[str], scale: str) -> list[Any]:
    """Layouts from preset names (``gla-6:1``, scale ``scale`` when none is given) or layout YAML files."""
    from hyla.space.presets import load_layout

    return [load_layout(n, default_scale=scale) for n in names]


# ------------------------------------------------------------------------------------------------ Ray workers

def start_workers(n: int, device: str) -> Any:
    """``n`` proxy workers of the product (`hyla.search.workers.WorkerPool`) on a local Ray started here: each
    gets ``cpu_count // n`` cores and, for a CUDA ``device``, ``1/n`` of a GPU (several workers share one GPU)."""
    from hyla.search.workers import WorkerPool, ensure_ray

    cuda = device.startswith("cuda")
    gpus = 0
    if cuda:
        import torch

        gpus = torch.cuda.device_count()  # told to Ray: its own detection may miss a carried-in CUDA
    cpus = max(1, (os.cpu_count() or 1) // n)
    ensure_ray(None, num_cpus=cpus * n, num_gpus=gpus)
    share = math.floor(10_000 / n) / 10_000 if cuda else 0.0  # Ray counts 1e-4 GPU: n shares must fit in 1
    return WorkerPool(n, cpus, share, device=device)


def wait_ready(pool: Any, deadline: Deadline) -> dict[int, float] | None:
    """Block until every worker of ``pool`` is up (torch and the proxy trainer imported); the seconds each took
    from the pool's creation, by slot, or None at the deadline."""
    import ray

    ready: dict[int, float] = {s: 0.0 for s in pool.ready_slots()}
    while pool.starting:
        done, _ = ray.wait(list(pool.starting), num_returns=1, timeout=max(0.05, deadline.left()))
        if not done:
            return None
        slot = pool.started(done[0])  # a failed start is retried; three in a row raise ConfigError
        if slot is not None:
            ready[slot] = time.monotonic() - pool.created
    return ready


def close_workers(pool: Any) -> None:
    """Kill the pool's actors (a trial still running at the cap is simply lost) and stop the local Ray."""
    import ray

    if pool is not None:
        pool.shutdown()
    if ray.is_initialized():
        ray.shutdown()


def _message(job: dict[str, Any], outcome: Any, t_submit: float) -> tuple[str, int, Any, dict[str, Any]]:
    """The message of one finished trial (see the module docstring) from its ``hyla.search.dispatch.Outcome``."""
    slot = outcome.slot
    if outcome.kind == "died":
        return ("error", slot, job["id"], {"error": f"worker died: {outcome.error}"})
    if outcome.kind == "error":
        return ("error", slot, job["id"], {"error": outcome.error})
    out = outcome.value
    result = out["result"]
    if "layout_key" not in result:  # the worker's own failure dicts (config_error, an escaped exception)
        return ("error", slot, job["id"], {"error": f"{result['status']}: {result.get('fail_reason')}"})
    starts = out["step_starts"]
    return ("result", slot, job["id"], {
        "result": result, "t_submit": t_submit, "t_recv": out["t_start"], "t_end": out["t_end"],
        "step_starts": starts, "probe": bool(starts), "t_first_step": starts[1] if len(starts) > 1 else None,
        "pid": out["pid"]})


def slowest_first(layouts: list[Any]) -> list[Any]:
    """Longest expected trial first (LPT scheduling: the last trials to finish are short ones, so the workers end
    together). A layout's cost is the mean per-token time of its layers' kinds; unknown kinds count as slowest."""
    slowest = min(KIND_TOKENS_PER_S.values())

    def cost(layout: Any) -> float:
        return sum(1.0 / KIND_TOKENS_PER_S.get(spec.mixer, slowest) for spec in layout.layers) / layout.n_layers

    return sorted(layouts, key=cost, reverse=True)  # stable: equal costs keep the given order


def run_timed(pool: Any, jobs: list[dict[str, Any]], deadline: Deadline,
              on_message: Callable[[tuple[str, int, Any, dict[str, Any]], dict[str, Any]], None],
              can_start: Callable[[], bool] | None = None,
              on_start: Callable[[int, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` on the pool's workers through the search's scheduler (``hyla.search.dispatch.drive``), in
    order, one per free worker, each with `WorkerPool.submit_timed`; ``on_message(msg, job)`` per finished job.

    Args:
        pool: from `start_workers`.
        jobs: dicts with ``id``, ``layout`` (a Layout), ``config`` (a ProxyConfig) and optionally ``out_dir`` and
            ``before_first_step`` (see the module docstring); other keys are the caller's.
        deadline: no job starts after it, and the call returns at it even with jobs running.
        can_start: asked before each start; False = start nothing more (e.g. the next job would not fit).
        on_start: called with (slot, job) as each job is handed to a worker.

    Returns:
        The jobs that did not finish: never started, or still running at the deadline (kill them with
        `close_workers`).
    """
    from hyla.search.dispatch import drive

    todo = list(jobs)
    t_submit: dict[int, float] = {}

    def submit(slot: int, job: dict[str, Any]) -> Any:
        t_submit[id(job)] = time.time()
        ref = pool.submit_timed(slot, job["layout"].to_dict(), job["config"], job.get("out_dir"),
                                job.get("before_first_step"))
        if on_start is not None:
            on_start(slot, job)
        return ref

    def finished(job: dict[str, Any], outcome: Any) -> None:
        on_message(_message(job, outcome, t_submit[id(job)]), job)

    cap = None if deadline.max_seconds is None else time.monotonic() + deadline.left()
    unfinished = drive(pool, lambda: todo.pop(0) if todo else None, submit, finished, deadline=cap,
                       can_start=can_start)
    return unfinished + todo


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
