"""Shared pieces of the search tests: a tiny space, a few-step proxy, one local Ray per test session."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from hyla.config import dump_yaml

#: 4-layer d32 layouts; 2 mixers x {0, 1, 2} attention layers x 2 placements (a small space on purpose:
#: identical layouts are frequent, which exercises reuse).
SPACE: dict[str, Any] = {"scale": "tiny", "n_layers": 4, "mixers": ["gla", "hgrn"], "n_attention": [0, 1, 2],
                         "placements": ["uniform_last", "uniform_first"]}

#: A proxy that takes a second or two on CPU: a handful of steps, tiny evaluation.
PROXY: dict[str, Any] = {"preset": "tiny", "steps": 2, "seq_len": 64, "batch_size": 4, "warmup": 1,
                         "eval_batches": 1, "eval_batch_size": 4, "text": {"source": "stdlib", "max_docs": 20},
                         "recall": {"family": "suite", "levels": "tiny", "mix": 0.25, "max_len": 64,
                                    "eval_examples": 2}}


def study_dict(tmp: Path, name: str = "t", **kw: Any) -> dict[str, Any]:
    """A study mapping in ``tmp`` (journal storage unless ``storage`` is given)."""
    d: dict[str, Any] = {"name": name, "run_dir": str(tmp / name), "space": SPACE, "sampler": "random", "seed": 1,
                         "n_trials": 3, "rungs": [{"proxy": PROXY}],
                         "ray": {"num_workers": 2, "cpus_per_worker": 1}}
    d.update(kw)
    return d


def write_study(tmp: Path, name: str = "t", **kw: Any) -> Path:
    path = tmp / f"{name}.yaml"
    dump_yaml(study_dict(tmp, name, **kw), path)
    return path


def ray_up() -> None:
    """One local Ray for the whole test session (2 CPUs, small object store); later calls are no-ops."""
    from hyla.search.workers import ensure_ray

    ensure_ray(None, num_cpus=2)


def wait_for_file(path: Path, proc: subprocess.Popen, seconds: float, what: str) -> None:
    """Poll until ``path`` exists (a fault hook's ``hang.pid``); fail if ``proc`` exits first or time runs out."""
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the driver exited before {what}:\n{proc.stdout.read() if proc.stdout else ''}"
        assert time.time() < deadline, f"{what} never happened within {seconds:.0f} s"
        time.sleep(0.1)
