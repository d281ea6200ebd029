"""Where hyla keeps what it computes once per machine: ``$HYLA_CACHE_DIR`` (default ``~/.cache/hyla``).

One root for every on-disk cache, so a user moves or clears them all with one variable:

- ``<root>/kernels``: compiled GPU kernels (`use_kernel_caches`). fla's kernels are Triton: a process meeting a
  kernel for the first time compiles it and autotunes it over a dozen or more configurations, minutes for a 340M
  model. Triton keeps both (compiled binaries, and the autotuning winners through ``cache_results``, which fla
  0.6.0 turns on unless ``FLA_CACHE_RESULTS=0``) under ``TRITON_CACHE_DIR``; ``torch.compile`` keeps its kernels
  and FX graphs under ``TORCHINDUCTOR_CACHE_DIR``. Pointing both into the root makes the first-ever compile happen
  once per machine: `hyla train`, every Ray worker of a search and the benchmarks all read the same directories.
- ``<root>/text``: hub text documents (`hyla.proxy_train.train.text`).
- other helpers' entries (cached teachers and capacity curves) under their own sub-folders.

Triton reads ``TRITON_CACHE_DIR`` on every compile, but fla reads ``FLA_CACHE_RESULTS`` and Triton's autotuners
read ``TRITON_CACHE_AUTOTUNING`` when fla's modules are imported: call `use_kernel_caches` before anything imports
fla (the ``hyla`` command does it first thing; so do the Ray workers, whose processes may live on other nodes).
Variables the user already set win: an explicit ``TRITON_CACHE_DIR`` is kept.

fla's other cache, ``FLA_CONFIG_DIR`` with ``FLA_CACHE_MODE``, is a read-only store of pre-tuned configurations
(none ship with fla 0.6.0); fla never writes to it, so it is left alone here.

On a cluster every node keeps its own root (its own ``~``) unless ``HYLA_CACHE_DIR`` names shared storage in the
environment of each node's ``ray start``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "KERNEL_ENV_KEYS", "cache_root", "kernel_cache_env", "kernel_caches_in_effect",
           "use_kernel_caches"]

#: the environment variable naming the root of every hyla cache
ENV_VAR = "HYLA_CACHE_DIR"
#: the variables `use_kernel_caches` sets, in the order they are reported
KERNEL_ENV_KEYS = ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_AUTOTUNING", "FLA_CACHE_RESULTS")


def cache_root(root: str | Path | None = None) -> Path:
    """The cache root: ``root`` when given, else ``$HYLA_CACHE_DIR``, else ``~/.cache/hyla`` (absolute; not created:
    each cache creates its own sub-folder when it first writes)."""
    path = Path(root or os.environ.get(ENV_VAR) or Path.home() / ".cache" / "hyla").expanduser()
    return path.resolve()


def kernel_cache_env(root: str | Path | None = None) -> dict[str, str]:
    """The kernel-cache variables for the root `cache_root(root)`, ignoring what the environment already holds."""
    kernels = cache_root(root) / "kernels"
    return {"TRITON_CACHE_DIR": str(kernels / "triton"), "TORCHINDUCTOR_CACHE_DIR": str(kernels / "inductor"),
            "TRITON_CACHE_AUTOTUNING": "1", "FLA_CACHE_RESULTS": "1"}


def use_kernel_caches(root: str | Path | None = None) -> dict[str, str | None]:
    """Point this process's (and its future children's) Triton and Inductor caches into `cache_root(root)`.

    Sets each variable of `kernel_cache_env` that is not set yet and returns `kernel_caches_in_effect`. Call it
    before fla is imported (see the module docstring); later calls change nothing already set.
    """
    for key, value in kernel_cache_env(root).items():
        os.environ.setdefault(key, value)
    return kernel_caches_in_effect()


def kernel_caches_in_effect() -> dict[str, str | None]:
    """The kernel-cache variables of this process as they are now (None: unset), for logs and result files."""
    return {key: os.environ.get(key) for key in KERNEL_ENV_KEYS}
