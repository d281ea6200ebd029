"""`ProxyResult`: what one proxy training measured, with the spread over its seeds (`aggregate_seeds`)."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class ProxyResult:
    """Outcome of one proxy training (JSON-serialisable via `to_dict`).

    Memory fields are per sequence at ``context`` tokens in ``memory_dtype``: ``kv_bytes`` = softmax KV caches,
    ``recurrent_bytes`` = linear-mixer recurrent + short-conv states, ``state_bytes`` = their sum (all inference
    state). ``peak_mem_bytes`` is CUDA max allocated on GPU, the process peak RSS on CPU.

    ``proxy_family`` names the recall family that produced ``recall`` (``suite``, ``probe``; None without recall:
    `hyla.proxy_train.proxy.recall`). ``recall_auc`` (probe only) is the area under the probe's learning curve
    (`hyla.proxy_train.probe.stack.curve_auc`).

    ``kl_to_teacher`` (families that start from a teacher, e.g. ``supernet``) is the token-mean KL(teacher || model)
    on held-out text; ``family_extra`` has one entry per seed of what such a family records beside its scores (the
    supernet's cache key and training time).

    Noise: ``lm_val_loss``, ``recall``, ``recall_auc``, ``train_loss``, ``kl_to_teacher`` and ``recall_tasks`` are
    means over ``seeds``;
    ``seed_values[metric]`` holds one value per seed and ``sem[metric]`` the standard error of the mean
    (sample std / sqrt(n); None with one seed, where the spread is unknown). ``probe`` has one entry per seed
    when recall comes from the recall probe (best LR, per-LR scores, learning curves).
    """

    status: str
    fail_reason: str | None = None
    lm_val_loss: float | None = None
    recall: float | None = None
    proxy_family: str | None = None
    recall_auc: float | None = None
    kl_to_teacher: float | None = None
    recall_tasks: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    params: int = 0
    non_embedding_params: int = 0
    kv_bytes: int = 0
    recurrent_bytes: int = 0
    state_bytes: int = 0
    context: int = 0
    tokens_seen: int = 0
    tokens_per_s: float | None = None
    peak_mem_bytes: int | None = None
    wall_s: float = 0.0
    steps: int = 0
    diverged_step: int | None = None
    layout_key: str = ""
    layout_name: str = ""
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    seed_values: dict[str, list[float]] = field(default_factory=dict)
    sem: dict[str, float | None] = field(default_factory=dict)
    probe: list[dict[str, Any]] = field(default_factory=list)
    family_extra: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProxyResult:
        return cls(**data)


#: Per-seed metrics whose mean, per-seed values and standard error a `ProxyResult` reports.
SEED_METRICS = ("lm_val_loss", "recall", "recall_auc", "kl_to_teacher", "train_loss")


def aggregate_seeds(per_seed: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Fold the per-seed result fields into one: means, ``seed_values``, ``sem`` (None below two seeds).

    The status is the first non-``ok`` seed's (with its reason), else ``ok``; token counts add up.
    """
    bad = next((f for f in per_seed if f["status"] != "ok"), None)
    ok = [f for f in per_seed if f["status"] == "ok"]
    out: dict[str, Any] = {k: v for k, v in (bad or per_seed[0]).items() if k not in ("probe", "family_extra")}
    out["seeds"] = seeds[: len(per_seed)]
    out["seed_values"], out["sem"] = {}, {}
    for m in SEED_METRICS:
        vals = [float(f[m]) for f in ok if f.get(m) is not None]
        if not vals:
            continue
        out["seed_values"][m] = vals
        out["sem"][m] = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else None
        if bad is None:
            out[m] = statistics.fmean(vals)
    if bad is None and ok and ok[0].get("recall_tasks"):
        out["recall_tasks"] = {k: statistics.fmean(f["recall_tasks"][k] for f in ok) for k in ok[0]["recall_tasks"]}
    speeds = [f["tokens_per_s"] for f in ok if f.get("tokens_per_s")]
    out["tokens_per_s"] = statistics.fmean(speeds) if speeds else None
    out["tokens_seen"] = sum(f.get("tokens_seen", 0) for f in per_seed)
    out["probe"] = [f["probe"] for f in per_seed if f.get("probe")]
    out["family_extra"] = [f["family_extra"] for f in per_seed if f.get("family_extra")]
    return out
