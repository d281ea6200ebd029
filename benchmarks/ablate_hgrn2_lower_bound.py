"""Ablation, not a product feature: does fla's forget-gate lower bound let a deep HGRN-2 hybrid learn recall?

fla's HGRN-2 *model* (``HGRN2Model`` with ``use_lower_bound``) gives layer ``i`` of ``L`` a learned lower bound on
its forget gate, ``softmax(P).cumsum(0)[i] - softmax(P)[0]`` with ``P`` zero-initialised, i.e. ``i / L`` at the
start: the forget gate is ``lb + (1 - lb) * sigmoid(f)`` (``HGRN2Attention.forward``'s ``lower_bound``), so deep
layers start with long memory. hyla's blocks have no model-level parameter to hold it (README, "Mixers"), so
hyla's HGRN-2 layers run without it. This script runs `bench_probe_depth.py` (the product's recall probe through
``run_probes``) with the CPU path of every HGRN-2 layer patched to apply the bound at its **initial, fixed** value
``layer_idx / depth`` (not learned: a hint of whether building the real thing is worth it, not that thing).

    OMP_NUM_THREADS=1 python benchmarks/ablate_hgrn2_lower_bound.py --depths 24 --layouts hgrn2-3:1 --heads 4 \\
        --lrs 0.001 --steps 2000 --curriculum 0.25 --zero-init all --seeds 0 --out OUT.json

Every argument is `bench_probe_depth.py`'s; the depth of the run (one ``--depths`` value) sets ``L``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_probe_depth  # noqa: E402


class _BoundedF:
    """Stands in for hgrn2's module-level ``F`` during one layer's forward: ``logsigmoid(f)`` becomes
    ``log(lb + (1 - lb) * sigmoid(f))`` (fla's ``torch.logaddexp(lb.log(), log1p(-lb) + g)``); every other name is
    torch.nn.functional's."""

    def __init__(self, bound: float) -> None:
        self.bound = bound

    def __getattr__(self, name: str) -> Any:
        return getattr(F, name)

    def logsigmoid(self, f: torch.Tensor) -> torch.Tensor:
        g = F.logsigmoid(f)
        if self.bound <= 0:  # fla leaves layer 0 unbounded
            return g
        return torch.logaddexp(torch.full_like(g, self.bound).log(), math.log1p(-self.bound) + g)


def patch_lower_bound(depth: int) -> None:
    """Make every HGRN-2 layer's CPU forward use the fixed lower bound ``layer_idx / depth``. Only ``F.logsigmoid``
    of the forget projection changes: the rest of the forward is the product's."""
    from hyla.proxy_train.mixers import hgrn2

    original = hgrn2.HGRN2Mixer._cpu_forward

    def forward(self: Any, x: torch.Tensor, state: Any, use_cache: bool) -> Any:
        hgrn2.F = _BoundedF(self.layer_idx / depth)
        try:
            return original(self, x, state, use_cache)
        finally:
            hgrn2.F = F

    hgrn2.HGRN2Mixer._cpu_forward = forward


if __name__ == "__main__":
    argv = sys.argv[1:]
    after = argv[argv.index("--depths") + 1:] if "--depths" in argv else []
    depths = []
    for a in after:
        if a.startswith("--"):
            break
        depths.append(a)
    if len(depths) != 1 or not depths[0].isdigit():
        raise SystemExit("ablate_hgrn2_lower_bound: give exactly one --depths value (it sets L)")
    patch_lower_bound(int(depths[0]))
    bench_probe_depth.main_guard(bench_probe_depth.main)
