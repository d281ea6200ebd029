"""How long the README's quickstart takes: `hyla search run examples/quickstart.yaml` in a fresh directory.

A shared machine gives no idle wall time, so besides the wall time (with the load average before and after) this
samples the CPU time of every proxy worker process twice a second and charges each trial the CPU its worker spent
between the trial's start and end. The proxy workers run one thread each (Ray sets OMP_NUM_THREADS=1 for 1-CPU
actors), so on idle cores a trial's wall time is about its CPU time, and the study's proxy time is the makespan of
those CPU times over the workers, in trial order (each rung after the previous). ``idle_estimate_s`` adds the
start-up (Ray and the workers' imports, timed on the machine as it was: an upper bound when it was loaded).

    python benchmarks/bench_quickstart.py --out benchmarks/results/bench_quickstart_cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import machine_info, write_json  # noqa: E402  (shared benchmark helpers)

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _worker_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of every live proxy worker process, by pid."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if b"_ProxyWorkerImpl" in Path(f"/proc/{d}/cmdline").read_bytes():
                    fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                    out[int(d)] = (int(fields[11]) + int(fields[12])) / TICK
            except OSError:
                pass
    return out


def _makespan(seconds: list[float], workers: int) -> float:
    free = [0.0] * workers
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free, default=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_quickstart_cpu.json"))
    args = ap.parse_args()
    run = Path(tempfile.mkdtemp(prefix="hyla_quickstart_"))
    samples: list[tuple[float, dict[int, float]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.time(), _worker_cpu()))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "150"}
    load_before, t0 = os.getloadavg(), time.time()
    sampler.start()
    proc = subprocess.run([sys.executable, "-m", "hyla", "search", "run", str(REPO / "examples" / "quickstart.yaml")],
                          cwd=run, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    stop.set()
    sampler.join()
    load_after = os.getloadavg()
    if proc.returncode != 0:
        sys.exit(f"quickstart failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")

    def cpu_at(pid: int, t: float) -> float:
        seen = [cpu[pid] for ts, cpu in samples if ts <= t and pid in cpu]
        return seen[-1] if seen else 0.0

    from hyla.search.locate import locate_study
    from hyla.search.storage import load_rung_studies

    where = locate_study(run / "hyla_runs" / "quickstart")
    rungs, proxy_s = {}, 0.0
    for rung, study in load_rung_studies(where.storage, where.name).items():
        trials = []
        for t in study.get_trials(deepcopy=False):
            if t.state.name != "COMPLETE" or "reused_from" in t.user_attrs:
                continue
            pid = t.user_attrs["worker_node"]["pid"]
            start, end = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
            trials.append({"trial": t.number, "layout": t.user_attrs["layout"]["layers"],
                           "wall_s": round(end - start, 1), "cpu_s": round(cpu_at(pid, end + 0.6) - cpu_at(pid, start), 1)})
        rungs[str(rung)] = trials
        proxy_s += _makespan([t["cpu_s"] for t in trials], workers=2)
    first_worker = min((ts for ts, cpu in samples if cpu), default=t0)
    startup = first_worker - t0
    result = {"machine": machine_info("cpu"), "command": "hyla search run examples/quickstart.yaml",
              "wall_s": round(wall, 1), "load_average_before": load_before, "load_average_after": load_after,
              "startup_s": round(startup, 1), "proxy_makespan_cpu_s": round(proxy_s, 1),
              "idle_estimate_s": round(startup + proxy_s, 1), "rungs": rungs,
              "output_tail": proc.stdout.splitlines()[-14:]}
    print(f"wall {wall:.0f} s at load {load_before[0]:.1f}-{load_after[0]:.1f}; idle estimate "
          f"{startup + proxy_s:.0f} s (start-up {startup:.0f} s + proxies {proxy_s:.0f} CPU-s over 2 workers)")
    print(f"wrote {write_json(args.out, result)}")


if __name__ == "__main__":
    main()
