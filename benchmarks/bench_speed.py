"""GPU speed through hyla's own paths (issue 33): `hyla train`, its kernel options, fla and Llama beside it, cold
start, packing. One command per device call; results as they arrive.

Every figure comes from the product: `hyla train` runs as the user runs it (``python -m hyla train SPEC``, a local
Ray, one Ray Train worker) and its numbers are read from its own ``train_log.jsonl`` (tokens/s, MFU, peak memory,
and the first step's ``startup``); the in-process comparisons are `bench_340m` (hyla train's model and step), the
packing figures `bench_packing` (the search's Ray workers). Each phase runs in a subprocess with the time left,
and ``bench_speed.json`` in ``--out`` is rewritten after every phase, so a call cut at its limit keeps what it
measured. Phases, most important first:

part 1 (a fresh machine: the first-ever compile happens here)
  train_cold:gla      hyla train gla-6:1@340m, empty kernel cache, to step 5: launch -> first optimizer step is the
                      first-ever compilation and autotuning of every kernel the model meets
  train_warm:gla      the same spec in a second process: its time to the first step (target <= 30 s), then the
                      steady tokens/s, MFU and peak memory over --train-steps steps (the log's windows after start-up)
  levers:gla          bench_340m: gla-6:1 under each speed option (fused loss/norm/SwiGLU, tf32, recompute + 2x batch)
  train_cold:transformer / train_warm:transformer
  archive             the kernel cache into --out (kernel_cache.tar.gz.NN, kernel_autotune.tar.gz), to seed part 2
                      on a fresh machine (--seed-cache)
part 2
  train:transformer   hyla train transformer@340m (again, if part 1 ran it: a second sample of its noise)
  side_by_side        bench_340m: hyla transformer / gla-6:1 / gla-pure beside fla's GLAForCausalLM and transformers'
                      LlamaForCausalLM (sdpa), same card, same process
  train_fast:gla / train_fast:transformer   hyla train with --fast-options (default: fused loss, norm, SwiGLU, tf32)
  levers:transformer  bench_340m: transformer under part 1's options
  levers:compile      bench_340m: torch.compile configurations of gla-6:1 and transformer
  gdn (--gdn: needs tilelang on Hopper with triton < 3.7.1)   hyla train gdn-6:1 cold/warm, fla's GatedDeltaNet beside
  train_1.3b          hyla train gla-6:1@1.3b with --fast-options, micro-batch 4: MFU and peak memory on one GPU
  packing             bench_packing: gla-6:1@small proxies on 1 vs 4 Ray workers sharing the GPU
  archive

    python benchmarks/bench_speed.py --part 1 --out "$OUT"            # on the device (docs/gpu-machine.md)
    python benchmarks/bench_speed.py --cpu-smoke --out /tmp/speed       # every phase end to end, tiny, on the CPU
    python benchmarks/bench_speed.py --part 2 --dry                     # print the phases of part 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import log, machine_info, write_json  # noqa: E402

from hyla.cache_dirs import ENV_VAR, KERNEL_ENV_KEYS, use_kernel_caches  # noqa: E402

NAME = "bench_speed"
PART_MB = 12  # a file back from the device is at most 16 MiB
MAX_PARTS = 2  # a call carries 64 MiB: Ray (~28), the wheels (~7), the repository and at most 24 of kernel cache
FAST = {"fused_loss": True, "fuse_norm": True, "fuse_swiglu": True, "tf32": True}
#: CPU smoke shapes: two-layer layouts, T 64
SMOKE_LAYOUTS = {
    "gla-6:1": {"layers": ["gla", "attn"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64, "num_heads": 2,
                "name": "smoke-gla"},
    "transformer": {"layers": ["attn", "attn"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64,
                    "num_heads": 2, "name": "smoke-transformer"},
    "gla-pure": {"layers": ["gla", "gla"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64, "num_heads": 2,
                 "name": "smoke-gla-pure"},
    "gdn-6:1": {"layers": ["gdn", "attn"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64, "num_heads": 2,
                "name": "smoke-gdn"},
    "gdn-pure": {"layers": ["gdn", "gdn"], "d_model": 32, "vocab_size": 512, "mlp_hidden": 64, "num_heads": 2,
                 "name": "smoke-gdn-pure"},
}


@dataclass
class Phase:
    name: str
    needs_s: float  # start only with at least this much time left (else recorded as skipped)
    run: Callable[[], dict[str, Any]]


class Bench:
    """The state of one invocation: arguments, deadline, work and output folders, the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.time()
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.cache = Path(args.cache).resolve()
        self.smoke = args.cpu_smoke
        self.report: dict[str, Any] = {"benchmark": NAME, "part": args.part, "cpu_smoke": self.smoke,
                                       "args": {k: str(v) for k, v in vars(args).items()}, "phases": {}}

    # -- time and files -------------------------------------------------------------------------------------
    def left(self) -> float:
        return self.args.max_seconds - (time.time() - self.t0)

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.time() - self.t0, 1)
        write_json(self.out / f"{NAME}.json", self.report)

    def env(self) -> dict[str, str]:
        """The environment of every subprocess: the product's own cache convention ($HYLA_CACHE_DIR only)."""
        env = {k: v for k, v in os.environ.items() if k not in KERNEL_ENV_KEYS}
        env.update({ENV_VAR: str(self.cache), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"})
        return env

    def kernel_files(self) -> int:
        root = self.cache / "kernels"
        return sum(len(files) for _, _, files in os.walk(root)) if root.is_dir() else 0

    def layout(self, name: str, scale: str = "340m") -> str | dict[str, Any]:
        """A spec's layout: the preset at ``scale`` on the GPU, a two-layer stand-in in the CPU smoke run."""
        return dict(SMOKE_LAYOUTS[name]) if self.smoke else f"{name}@{scale}"

    def layout_arg(self, name: str, scale: str = "340m") -> str:
        """A layout for the benchmark scripts' command lines (a YAML file in the smoke run)."""
        if not self.smoke:
            return f"{name}@{scale}"
        import yaml

        path = self.work / f"{name.replace(':', '_')}.yaml"
        path.write_text(yaml.safe_dump(SMOKE_LAYOUTS[name]))
        return str(path)

    # -- one subprocess ---------------------------------------------------------------------------------------
    def run_cmd(self, cmd: list[str], log_path: Path, timeout: float, cwd: Path | None = None,
                stop_when: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Run ``cmd`` in its own session until it ends, ``stop_when()`` holds or ``timeout``; then kill its whole
        process group (and any Ray it started). Returns the exit code (None when stopped) and the wall time."""
        t = time.time()
        with log_path.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=self.env(), cwd=cwd or self.work,
                                    start_new_session=True)
            reason = "exited"
            while proc.poll() is None:
                if stop_when is not None and stop_when():
                    reason = "stopped: measured enough"
                    break
                if time.time() - t > timeout:
                    reason = "stopped: time limit"
                    break
                time.sleep(0.5)
        code = proc.poll()
        if code is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
        wall = round(time.time() - t, 1)
        self._stop_ray()
        return {"exit_code": code, "ended": reason, "wall_s": wall, "gpu_free_after_s": self._wait_gpu_free()}

    def _stop_ray(self) -> None:
        """Ray's processes share the killed driver's fate (its process group, parent-death signals); on the device
        machine, which runs nothing else, ``ray stop`` also ends any straggler holding GPU memory. Never in the
        CPU smoke run: that would stop other people's Ray on a shared machine."""
        if not self.smoke and _importable("ray"):
            subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"], env=self.env(),
                           capture_output=True, timeout=60)

    def _wait_gpu_free(self, limit: float = 30.0) -> float | None:
        """Seconds until no other process holds the GPU (the next phase starts on a free card); None when one
        still does after ``limit`` (recorded with the phase) or there is no nvidia-smi."""
        if self.smoke or not shutil.which("nvidia-smi"):
            return None
        t = time.time()
        while time.time() - t < limit:
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.split()
            if not [pid for pid in out if pid.strip() != str(os.getpid())]:
                return round(time.time() - t, 1)
            time.sleep(1)
        return None


def gpu_info() -> dict[str, Any]:
    """The GPUs as nvidia-smi lists them (name, memory, driver), without touching CUDA in this process."""
    if not shutil.which("nvidia-smi"):
        return {"gpu": None}
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip().splitlines()
    return {"gpu": [line.strip() for line in out], "gpu_count": len(out)}


def _importable(name: str) -> bool:
    from importlib.util import find_spec

    return find_spec(name) is not None


def _tail(path: Path, n: int = 40) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:] if path.is_file() else []


# ------------------------------------------------------------------------------------------------ hyla train


def train_spec(b: Bench, layout: str, scale: str, steps: int, options: dict[str, Any], out_dir: Path,
               micro_batch: int | None = None) -> dict[str, Any]:
    """A `hyla train` spec that logs every 5 steps and outlives the measurement (it is stopped, never finished)."""
    a = b.args
    seq, micro = (64, 2) if b.smoke else (2048, micro_batch or a.micro_batch)
    gbt = seq * micro * a.accum
    return {"layout": b.layout(layout, scale), "scale": "custom" if b.smoke else scale, "seq_len": seq,
            "micro_batch": micro, "global_batch_tokens": gbt, "tokens": (steps + 100) * gbt, "warmup_steps": 10,
            "log_every": 2 if b.smoke else 5, "checkpoint_every": 10**6, "text": {"source": "stdlib"},
            "tokenizer": "byte", "out_dir": str(out_dir), "num_workers": 1, "use_gpu": not b.smoke,
            "bf16": not b.smoke, "eval": {"val_tokens": 1, "recall_examples": 0, "recall_tasks": ["mqar"]},
            **options}


def hyla_train(b: Bench, label: str, layout: str, steps: int, options: dict[str, Any] | None = None,
               scale: str = "340m", micro_batch: int | None = None) -> dict[str, Any]:
    """``python -m hyla train`` until its log reaches ``steps``; the figures are its own log rows."""
    import yaml

    work = b.work / label.replace(":", "_")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec = train_spec(b, layout, scale, steps, options or {}, work / "run", micro_batch)
    (work / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    log_path, rows_path = work / "train.log", work / "run" / "train_log.jsonl"

    def rows() -> list[dict[str, Any]]:
        if not rows_path.is_file():
            return []
        out = []
        for line in rows_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                pass
        return out

    files_before = b.kernel_files()
    launched = time.time()
    run = b.run_cmd([sys.executable, "-m", "hyla", "train", str(work / "spec.yaml")], log_path,
                    timeout=b.left() - b.args.reserve, cwd=work,
                    stop_when=lambda: any(r["step"] >= steps for r in rows()))
    got = rows()
    res: dict[str, Any] = {"layout": spec["layout"], "scale": spec["scale"], "options": options or {},
                           "micro_batch": spec["micro_batch"], "global_batch_tokens": spec["global_batch_tokens"],
                           "seq_len": spec["seq_len"], **run, "kernel_files_before": files_before,
                           "kernel_files_after": b.kernel_files(), "rows": got}
    if not got:
        return {**res, "status": "failed: no log row", "log_tail": _tail(log_path)}
    first = got[0]
    res.update(status="ok" if got[-1]["step"] >= steps else "partial", first_step=first["step"],
               launch_to_first_step_s=round(first["time"] - launched, 1), startup=first.get("startup"),
               steady=steady(got, spec["global_batch_tokens"]))
    if res["status"] != "ok":
        res["log_tail"] = _tail(log_path)
    return res


def steady(rows: list[dict[str, Any]], tokens_per_step: int) -> dict[str, Any]:
    """Throughput over the log windows after start-up: the process's first-step row and the window right after
    it (steps still meeting kernels for the first time) are left out when at least two windows remain."""
    windows = []
    for prev, row in zip(rows, rows[1:]):
        steps = row["step"] - prev["step"]
        windows.append({"steps": steps, "tokens_per_s": row["tokens_per_s"], "mfu": row["mfu"],
                        "seconds": steps * tokens_per_step / row["tokens_per_s"] if row["tokens_per_s"] else None})
    use = windows[1:] if len(windows) >= 3 else windows
    use = [w for w in use if w["seconds"]]
    if not use:
        return {"windows": len(windows), "tokens_per_s": None}
    total_s = sum(w["seconds"] for w in use)
    tps = sum(w["steps"] for w in use) * tokens_per_step / total_s
    rates = [w["tokens_per_s"] for w in use]
    mean = sum(rates) / len(rates)
    sd = (sum((r - mean) ** 2 for r in rates) / max(1, len(rates) - 1)) ** 0.5
    ratio = use[-1]["mfu"] / use[-1]["tokens_per_s"] if use[-1]["mfu"] else None
    peaks = [r.get("peak_mem_gib") for r in rows if r.get("peak_mem_gib") is not None]
    return {"windows_used": len(use), "steps": sum(w["steps"] for w in use), "tokens_per_s": round(tps, 1),
            "window_tokens_per_s_sd": round(sd, 1), "mfu": round(tps * ratio, 4) if ratio else None,
            "peak_mem_gib": max(peaks) if peaks else None}


# ------------------------------------------------------------------------------------------------ in-process benches


def bench_340m(b: Bench, label: str, targets: list[str], configs: list[str]) -> dict[str, Any]:
    """`bench_340m` in a subprocess (its own CUDA context): its rows as it wrote them, even when cut."""
    out = b.work / f"{label.replace(':', '_')}.json"
    out.unlink(missing_ok=True)
    a = b.args
    shape = ["--device", "cpu", "--seq-len", "32", "--batch", "2", "--steps", "2", "--warmup", "1"] if b.smoke \
        else ["--steps", str(a.bench_steps), "--batch", str(a.micro_batch)]
    budget = int(b.left() - a.reserve)
    cmd = [sys.executable, str(HERE / "bench_340m.py"), "--targets", ",".join(targets), "--configs",
           ",".join(configs), "--out", str(out), "--max-seconds", str(max(1, budget - 10)), *shape]
    run = b.run_cmd(cmd, b.work / f"{label.replace(':', '_')}.log", timeout=budget)
    data = json.loads(out.read_text()) if out.is_file() else {}
    rows = data.get("results", [])
    res = {**run, "rows": rows, "status": "ok" if rows and all(r["status"] == "ok" for r in rows) else "partial"}
    if not rows:
        res["log_tail"] = _tail(b.work / f"{label.replace(':', '_')}.log")
    return res


def packing(b: Bench) -> dict[str, Any]:
    """`bench_packing` (the search's Ray workers, 1/P GPU each): P = 1 and 4 at the ``small`` proxy shape."""
    out = b.work / "packing.json"
    out.unlink(missing_ok=True)
    budget = int(b.left() - b.args.reserve)
    shape = ["--device", "cpu", "--proxy", "tiny", "--ps", "1,2", "--steps", "3", "--warm-steps", "1"] if b.smoke \
        else ["--device", "cuda", "--proxy", "small", "--ps", "1,4", "--steps", str(b.args.packing_steps)]
    cmd = [sys.executable, str(HERE / "bench_packing.py"), "--layout", b.layout_arg("gla-6:1", "small"),
           "--out", str(out), "--max-seconds", str(max(1, budget - 20)), "--fresh", *shape]
    run = b.run_cmd(cmd, b.work / "packing.log", timeout=budget)
    data = json.loads(out.read_text()) if out.is_file() else {}
    res = {**run, "summary": data.get("summary"), "rounds": data.get("rounds"), "workers": data.get("workers")}
    res["status"] = "ok" if data.get("complete") else "partial"
    if not data:
        res["log_tail"] = _tail(b.work / "packing.log")
    return res


# ------------------------------------------------------------------------------------------------ kernel cache


def archive_cache(b: Bench) -> dict[str, Any]:
    """The kernel cache into ``--out``: the whole of it (``kernel_cache.tar.gz``, split in `PART_MB` MiB parts, at
    most `MAX_PARTS`) and the autotuning results alone (``kernel_autotune.tar.gz``: Triton then skips the
    benchmarking of a kernel's configurations and compiles only the winner)."""
    root = b.cache / "kernels"
    if not root.is_dir():
        return {"status": "skipped: no kernel cache"}
    res: dict[str, Any] = {"root": str(b.cache), "files": b.kernel_files()}
    tuned = b.out / "kernel_autotune.tar.gz"
    with tarfile.open(tuned, "w:gz") as tar:
        for path in sorted(root.rglob("*.autotune.json")):
            tar.add(path, arcname=str(path.relative_to(b.cache)))
    res["autotune_bytes"] = tuned.stat().st_size
    whole = b.work / "kernel_cache.tar.gz"
    with tarfile.open(whole, "w:gz", compresslevel=6) as tar:
        tar.add(root, arcname="kernels")
    size = whole.stat().st_size
    res["cache_bytes"] = size
    parts = -(-size // (PART_MB * 2**20))
    if parts > MAX_PARTS:
        res["status"] = f"ok: autotune only (the whole cache is {size / 2**20:.0f} MiB, over {MAX_PARTS} parts)"
        return res
    with whole.open("rb") as fh:
        for i in range(parts):
            (b.out / f"kernel_cache.tar.gz.{i:02d}").write_bytes(fh.read(PART_MB * 2**20))
    res["status"] = f"ok: {parts} part(s)"
    return res


def seed_cache(b: Bench, source: Path) -> dict[str, Any]:
    """Unpack an archive of `archive_cache` (the parts, else the autotune file) into the cache root. Triton's
    compiled-kernel groups name their files by absolute path: seed into the same ``--cache`` that made them."""
    parts = sorted(source.glob("kernel_cache.tar.gz.*"))
    b.cache.mkdir(parents=True, exist_ok=True)
    if parts:
        joined = b.work / "seed.tar.gz"
        with joined.open("wb") as fh:
            for p in parts:
                fh.write(p.read_bytes())
        with tarfile.open(joined) as tar:
            tar.extractall(b.cache, filter="data")
        return {"seeded_from": [p.name for p in parts], "kernel_files": b.kernel_files()}
    tuned = source / "kernel_autotune.tar.gz"
    if tuned.is_file():
        with tarfile.open(tuned) as tar:
            tar.extractall(b.cache, filter="data")
        return {"seeded_from": [tuned.name], "kernel_files": b.kernel_files()}
    return {"seeded_from": [], "note": f"nothing to seed in {source}"}


# ------------------------------------------------------------------------------------------------ the plan


def phases(b: Bench) -> list[Phase]:
    a = b.args
    fast = dict(FAST) if a.fast_options == "default" else json.loads(a.fast_options)
    gla_levers = ["eager", "fused_loss", "fused_loss+tf32", "fuse_norm", "fuse_swiglu", "fused", "fused+tf32",
                  "fused+mlp2x", "fused+ckpt2x"]
    compile_levers = ["compile", "fused+tf32+compile", "fused+compile+mlp2x"]
    if b.smoke:  # each kind of configuration once (CPU steps are slow, CPU compiles slower)
        gla_levers, compile_levers = ["eager", "fused+tf32", "fused+mlp2x"], ["fused+tf32+compile"]
    # A cold run stops soon after its first step (the compile is what it measures); the warm second process
    # gives both its time to the first step and the steady throughput.
    steps_cold, steps = (2, 4) if b.smoke else (5, a.train_steps)
    part1 = [
        Phase("train_cold:gla", 60, lambda: hyla_train(b, "train_cold:gla", "gla-6:1", steps_cold)),
        Phase("train_warm:gla", 60, lambda: hyla_train(b, "train_warm:gla", "gla-6:1", steps)),
        Phase("levers:gla", 60, lambda: bench_340m(b, "levers:gla", [f"hyla:{b.layout_arg('gla-6:1')}"],
                                                    gla_levers)),
        Phase("train_cold:transformer", 60,
              lambda: hyla_train(b, "train_cold:transformer", "transformer", steps_cold)),
        Phase("train_warm:transformer", 60,
              lambda: hyla_train(b, "train_warm:transformer", "transformer", steps)),
    ]
    side = [f"hyla:{b.layout_arg('transformer')}", f"llama:{b.layout_arg('transformer')}",
            f"hyla:{b.layout_arg('gla-6:1')}", f"hyla:{b.layout_arg('gla-pure')}", f"fla:{b.layout_arg('gla-pure')}"]
    part2 = [  # a fresh machine unless seeded (--seed-cache) or still warm from part 1
        Phase("train:transformer", 60, lambda: hyla_train(b, "train:transformer", "transformer", steps)),
        Phase("side_by_side", 90, lambda: bench_340m(b, "side_by_side", side, ["eager", "fused+tf32"])),
        Phase("train_fast:gla", 60, lambda: hyla_train(b, "train_fast:gla", "gla-6:1", steps, fast)),
        Phase("train_fast:transformer", 60,
              lambda: hyla_train(b, "train_fast:transformer", "transformer", steps, fast)),
        Phase("levers:transformer", 60, lambda: bench_340m(
            b, "levers:transformer", [f"hyla:{b.layout_arg('transformer')}"], gla_levers)),
        Phase("levers:compile", 90, lambda: bench_340m(
            b, "levers:compile", [f"hyla:{b.layout_arg('gla-6:1')}", f"hyla:{b.layout_arg('transformer')}"],
            compile_levers)),
    ]
    if a.gdn:
        part2 += [
            Phase("train_cold:gdn", 90, lambda: hyla_train(b, "train_cold:gdn", "gdn-6:1", steps_cold)),
            Phase("train_warm:gdn", 60, lambda: hyla_train(b, "train_warm:gdn", "gdn-6:1", steps)),
            Phase("side_by_side:gdn", 60, lambda: bench_340m(
                b, "side_by_side:gdn", [f"hyla:{b.layout_arg('gdn-6:1')}", f"hyla:{b.layout_arg('gdn-pure')}",
                                        f"fla:{b.layout_arg('gdn-pure')}"], ["eager", "fused+tf32"])),
        ]
    part2 += [
        Phase("train_1.3b", 90, lambda: hyla_train(b, "train_1.3b", "gla-6:1", 15, fast, scale="1.3b",
                                                   micro_batch=4)),
        Phase("packing", 120, lambda: packing(b)),
    ]
    archive = [Phase("archive", 0, lambda: archive_cache(b))]
    return {"1": part1, "2": part2, "all": part1 + part2}[a.part] + archive


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("1", "2", "all"), default=None, help="default 1 (all with --cpu-smoke)")
    p.add_argument("--phases", default=None, help="only these phases of the part (comma-separated names)")
    p.add_argument("--out", default=os.environ.get("OUT") or str(HERE / "results" / NAME), help="results folder")
    p.add_argument("--work", default="/tmp/hyla_speed", help="scratch folder (run dirs, logs)")
    p.add_argument("--cache", default="/tmp/hyla_cache", help="HYLA_CACHE_DIR of every run (kernels under it)")
    p.add_argument("--seed-cache", default=None, help="folder with kernel_cache.tar.gz.NN or kernel_autotune.tar.gz "
                   "from an earlier call, unpacked into --cache first")
    p.add_argument("--fresh-cache", action="store_true", help="empty --cache first (a true first-ever compile)")
    p.add_argument("--max-seconds", type=float, default=500.0, help="wall-clock budget of this script (the "
                   "device call's 600 s less the staging)")
    p.add_argument("--reserve", type=float, default=25.0, help="seconds kept for the archive and the last write")
    p.add_argument("--train-steps", type=int, default=30, help="steps of a measured (warm) hyla train run")
    p.add_argument("--bench-steps", type=int, default=10, help="timed steps per bench_340m row")
    p.add_argument("--packing-steps", type=int, default=60)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--accum", type=int, default=4, help="micro-batches per optimizer step of hyla train runs")
    p.add_argument("--fast-options", default="default", help="JSON of RunSpec fields for the train_fast phases "
                   f"(default {json.dumps(FAST)})")
    p.add_argument("--gdn", action="store_true", help="also GatedDeltaNet (stage tilelang first on Hopper)")
    p.add_argument("--cpu-smoke", action="store_true", help="every phase on the CPU with two-layer models")
    p.add_argument("--dry", action="store_true", help="print the phases and exit")
    args = p.parse_args(argv)
    if args.part is None:
        args.part = "all" if args.cpu_smoke else "1"
    if args.cpu_smoke:
        args.reserve = min(args.reserve, 5.0)
    b = Bench(args)
    plan = phases(b)
    if args.phases:
        if unknown := set(args.phases.split(",")) - {ph.name for ph in plan}:
            p.error(f"--phases: {sorted(unknown)} not in part {args.part} ({', '.join(ph.name for ph in plan)})")
        plan = [ph for ph in plan if ph.name in args.phases.split(",")]
    if args.dry:
        for ph in plan:
            print(f"{ph.name:24s} needs >= {ph.needs_s:.0f} s left")
        return 0
    for key in KERNEL_ENV_KEYS:  # the runs follow $HYLA_CACHE_DIR alone (hyla.cache_dirs), as a user's do
        os.environ.pop(key, None)
    os.environ[ENV_VAR] = str(b.cache)
    if args.fresh_cache:
        shutil.rmtree(b.cache / "kernels", ignore_errors=True)
    b.report["cache"] = {"root": str(b.cache), "kernel_files_at_start": b.kernel_files(),
                         "env": use_kernel_caches()}
    if args.seed_cache:
        b.report["cache"]["seed"] = seed_cache(b, Path(args.seed_cache))
    b.report["machine"] = {**machine_info("cpu"), **gpu_info()}  # no CUDA context here: the runs need the GPU
    b.save()
    for ph in plan:
        if b.left() < ph.needs_s + (0 if ph.name == "archive" else args.reserve):
            b.report["phases"][ph.name] = {"status": f"skipped: {b.left():.0f} s left, needs {ph.needs_s:.0f}"}
            log(f"{ph.name}: skipped ({b.left():.0f} s left)")
            b.save()
            continue
        log(f"{ph.name}: start ({b.left():.0f} s left)")
        t = time.time()
        try:
            res = ph.run()
        except Exception as e:  # noqa: BLE001 - a broken phase must not lose the others
            res = {"status": f"failed: {type(e).__name__}: {str(e)[:300]}"}
        res["phase_s"] = round(time.time() - t, 1)
        b.report["phases"][ph.name] = res
        b.save()
        log(f"{ph.name}: {res.get('status')} in {res['phase_s']} s; {summary_line(res)}")
    log(f"wrote {b.out / (NAME + '.json')}")
    return 0


def summary_line(res: dict[str, Any]) -> str:
    """One line of a phase's main figures for the log."""
    if "steady" in res:
        s = res["steady"]
        return (f"first step after {res.get('launch_to_first_step_s')} s, {s.get('tokens_per_s')} tok/s, "
                f"MFU {s.get('mfu')}, peak {s.get('peak_mem_gib')} GiB")
    if "rows" in res:
        return "; ".join(f"{r['target'].split('/')[-1]} {r['config']}: {r.get('tokens_per_s')} tok/s "
                         f"{r.get('peak_mem_gib')} GiB" if r["status"] == "ok" else f"{r['config']}: {r['status']}"
                         for r in res["rows"])
    return json.dumps({k: v for k, v in res.items() if k in ("summary", "files", "cache_bytes")})


if __name__ == "__main__":
    sys.exit(main())
