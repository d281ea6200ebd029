"""The retrofit proxy: score a layout's recall by starting it from the trained teacher (issue 31).

`retrofit_scores(layout, cfg, seeds)` is the whole proxy for one layout:

1. the teacher of the layout's shape (`teacher.load_teacher`: cached, trained once under a file lock);
2. for each distinct linear layer spec of the layout, its kind's stage-1 mixers (`transfer.load_transfer`:
   cached per teacher and spec, trained once for all layers);
3. per seed: the student assembled from both (`distill.assemble`), stage 2 for ``budget x distill.steps`` steps
   with the seed's data order (`distill.distill`), then held-out scores (`distill.score`).

Each seed's result holds ``recall`` (the suite score: mean over each task's levels, then over tasks, as
`RecallSuite.evaluate`), ``levels`` (per-level accuracy), ``before`` (the same before stage 2), ``lm_loss`` and
``kl`` (held-out text), ``steps``, ``wall_s`` and the shared costs (teacher and stage-1 training seconds, zero
when they came from the cache). `run_retrofit_family` runs calibration jobs through the same function
(``hyla.proxy_train.retrofit.family``'s interface), and `run_family` / `check` are the product's recall family
``recall: {family: retrofit, ...}`` (``hyla.proxy_train.proxy.recall.RECALL_FAMILIES``; the mapping's other keys
are `RetrofitConfig` fields).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch

from hyla.config import ConfigError
from hyla.proxy_train.retrofit.config import RetrofitConfig
from hyla.proxy_train.retrofit.data import RetrofitData
from hyla.proxy_train.retrofit.distill import assemble, check_shape, distill, linear_specs, score
from hyla.proxy_train.retrofit.family import FamilyContext, FamilyJob, FamilyResult, suite_score
from hyla.proxy_train.retrofit.teacher import TeacherRun, load_teacher, teacher_layout
from hyla.proxy_train.retrofit.transfer import Transfer, load_transfer, train_transfer
from hyla.space.layout import LayerSpec, Layout

_DATA: dict[tuple[Any, ...], RetrofitData] = {}
#: the Retrofitters of this process (a Ray worker keeps its teacher and stage-1 mixers between trials)
_RETROFITTERS: dict[tuple[str, tuple[Any, ...]], Retrofitter] = {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"retrofit.device: {name!r} requested but CUDA is not available; use cpu or auto")
    return torch.device(name)


def retrofit_data(layout: Layout, cfg: RetrofitConfig) -> RetrofitData:
    """The level pools and text of ``cfg`` for ``layout``'s vocab (cached per process)."""
    key = (cfg.levels, layout.vocab_size, cfg.seq_len, cfg.text, cfg.pool_rows, cfg.eval_examples,
           cfg.eval_text_rows)
    if key not in _DATA:
        _DATA[key] = RetrofitData(cfg.levels, layout.vocab_size, cfg.seq_len, cfg.text, pool_rows=cfg.pool_rows,
                                  eval_examples=cfg.eval_examples, eval_text_rows=cfg.eval_text_rows)
    return _DATA[key]


class Retrofitter:
    """The teacher and the stage-1 mixers of one study (loaded or trained on first use), and the students.

    Args:
        layout: any layout of the study's shape (the teacher has its depth, width, heads, MLP and vocab).
        cfg: the recipe.
        log: progress lines.
    """

    def __init__(self, layout: Layout, cfg: RetrofitConfig, log: Callable[[str], None] = print) -> None:
        check_shape(teacher_layout(layout), teacher_layout(layout))
        self.cfg, self.log = cfg, log
        self.device = resolve_device(cfg.device)
        self.data = retrofit_data(layout, cfg)
        self.shared: dict[str, float] = {}
        with self._kernels():
            self.teacher: TeacherRun = load_teacher(layout, cfg, self.data, self.device, log)
        self.shared[f"teacher:{self.teacher.key}"] = 0.0 if self.teacher.cached else self.teacher.wall_s
        self.transfers: dict[LayerSpec, Transfer] = {}

    def _kernels(self) -> Any:
        if self.device.type != "cuda":
            return nullcontext()
        from hyla.proxy_train.model.mixers.common import kernel_path

        return kernel_path(self.cfg.kernels)

    def transfer(self, spec: LayerSpec) -> Transfer:
        """The stage-1 mixers of ``spec`` (cached per study; the mapping alone when ``stand_in`` is ``mapped``)."""
        if spec not in self.transfers and self.cfg.distill.stand_in == "mapped":
            self.transfers[spec] = train_transfer(self.teacher.model, spec, dataclasses.replace(
                self.cfg.transfer, steps=0, start="neutral"), self.data, self.device, self.log)
        if spec not in self.transfers:
            with self._kernels():
                tr = load_transfer(self.teacher.model, self.teacher.key, spec, self.cfg, self.data, self.device,
                                   self.log)
            self.transfers[spec] = tr
            self.shared[f"transfer:{self.teacher.key}:{spec.to_obj()}"] = 0.0 if tr.cached else tr.wall_s
        return self.transfers[spec]

    def score_seed(self, layout: Layout, seed: int, budget: int = 1) -> dict[str, Any]:
        """One seed of the proxy for ``layout`` (module docstring, step 3)."""
        check_shape(layout, self.teacher.model.layout)
        t0 = time.perf_counter()
        transfers = {spec: self.transfer(spec) for spec in linear_specs(layout)}
        t1 = time.perf_counter()
        teacher = self.teacher.model
        with self._kernels():
            student = assemble(layout, teacher, transfers, silent=self.cfg.distill.stand_in == "silent")
            before = score(student, teacher, self.data, self.device)
            steps = self.cfg.distill.steps * budget
            run = distill(student, teacher, self.cfg.distill, self.data, seed, steps, self.device)
            after = score(student, teacher, self.data, self.device)
        for part in (before, after):  # levels the teacher did not solve score no student (``unsolved: drop``)
            part["levels"] = {k: v for k, v in part["levels"].items() if k not in self.teacher.dropped}
        return {"recall": suite_score(after["levels"]), "levels": after["levels"], "lm_loss": after["lm_loss"],
                "kl": after["kl"], "before": {"recall": suite_score(before["levels"]), **before},
                "dropped": list(self.teacher.dropped),
                "steps": steps, "seed": seed, "budget": budget, "train_loss": run["train_loss"],
                "wall_s": time.perf_counter() - t1, "setup_s": t1 - t0, "teacher": self.teacher.key,
                "teacher_seed": self.teacher.seed,
                "transfer_error": {spec.mixer: transfers[spec].error_after for spec in transfers}}


def retrofit_scores(layout: Layout, cfg: RetrofitConfig, seeds: Sequence[int], budget: int = 1,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The retrofit proxy's per-seed results for ``layout`` (module docstring)."""
    rf = Retrofitter(layout, cfg, log)
    return [rf.score_seed(layout, seed, budget) for seed in seeds]


def floor_score(data: RetrofitData, dropped: Sequence[str] = ()) -> float:
    """The suite score of guessing one of the context's values on every level scored (not ``dropped``)."""
    return suite_score({k: v for k, v in data.floors.items() if k not in dropped})


def nest(options: dict[str, Any]) -> dict[str, Any]:
    """``{"teacher.recall_steps": 900, "seq_len": 64}`` -> ``{"teacher": {"recall_steps": 900}, "seq_len": 64}``
    (the driver's ``--set retrofit.teacher.recall_steps=900``); nested mappings are merged."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"retrofit options: {key!r} sets a field inside {part!r}, which is not a mapping")
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def run_retrofit_family(jobs: list[FamilyJob], ctx: FamilyContext,
                        on_result: Callable[[FamilyJob, FamilyResult], None]) -> None:
    """The calibration driver's runner (``family.Runner``): every job through one `Retrofitter`
    (``ctx.options["retrofit"]`` are `RetrofitConfig` fields over the defaults, dotted keys for nested parts;
    ``levels`` = ``ctx.level_set``)."""
    if not jobs:
        return
    opts = nest(dict(ctx.options.get("retrofit", {})))
    opts.setdefault("levels", ctx.level_set)
    opts.setdefault("device", ctx.device)
    if ctx.cache_root is not None:
        opts.setdefault("cache_dir", ctx.cache_root)
    cfg = RetrofitConfig.from_dict(opts, "retrofit options")
    rf = Retrofitter(jobs[0].layout, cfg, ctx.log)
    floor = floor_score(rf.data, rf.teacher.dropped)
    for job in jobs:
        if ctx.stop():
            return
        res = rf.score_seed(job.layout, job.seed, job.budget)
        ctx.log(f"retrofit {job.layout.name} seed {job.seed} x{job.budget}: recall {res['recall']:.3f} "
                f"(before stage 2 {res['before']['recall']:.3f}), kl {res['kl']:.3f}")
        on_result(job, FamilyResult(
            recall=res["recall"], levels=res["levels"], floor=floor, wall_s=res["wall_s"],
            budget_steps=res["steps"], shared=dict(rf.shared),
            extra={k: res[k] for k in ("lm_loss", "kl", "before", "teacher", "teacher_seed", "transfer_error",
                                       "train_loss", "dropped")} | {"config": dataclasses.asdict(cfg)}))


def retrofitter(layout: Layout, cfg: RetrofitConfig, log: Callable[[str], None] = print) -> Retrofitter:
    """The `Retrofitter` of ``cfg`` for ``layout``'s shape, kept for the life of the process (a worker's later
    trials reuse its teacher and stage-1 mixers; other processes load them from the cache)."""
    from hyla.proxy_train.retrofit.cache import content_key
    from hyla.proxy_train.retrofit.distill import _SHAPE

    key = (content_key(dataclasses.asdict(cfg)), tuple(getattr(layout, name) for name in _SHAPE))
    if key not in _RETROFITTERS:
        _RETROFITTERS[key] = Retrofitter(layout, cfg, log)
    return _RETROFITTERS[key]


def check(cfg: RetrofitConfig, layout: Layout) -> None:
    """Before any work: the layout has whole layers only and its vocab holds the level set's symbols (one-line
    ConfigError otherwise)."""
    from hyla.proxy_train.tasks.suite import RecallSuite

    check_shape(layout, layout)
    RecallSuite.named(cfg.levels, layout.vocab_size)


def run_family(proxy: Any, layout: Layout, seeds: list[int], dev: Any, progress: bool) -> list[dict[str, Any]]:
    """``recall: {family: retrofit}`` of a proxy config: one result dict per seed (the seed orders stage 2's data):
    ``recall`` (suite score), ``recall_tasks`` (per level), ``kl_to_teacher`` and, without an LM run
    (``train_lm: false``), ``lm_val_loss`` (the student's held-out text loss), plus ``family_extra`` (teacher key
    and seed, scores before stage 2, steps, seconds)."""
    cfg: RetrofitConfig = proxy.recall
    if cfg.device == "auto" and str(dev).startswith("cuda"):
        cfg = dataclasses.replace(cfg, device=str(dev))
    rf = retrofitter(layout, cfg, print if progress else (lambda _: None))
    out = []
    for seed in seeds:
        res = rf.score_seed(layout, seed)
        fields_ = {"recall": res["recall"], "recall_tasks": res["levels"], "kl_to_teacher": res["kl"],
                   "family_extra": {"teacher": res["teacher"], "teacher_seed": res["teacher_seed"],
                                    "before": res["before"]["recall"], "steps": res["steps"], "seed": seed,
                                    "dropped": res["dropped"],
                                    "wall_s": res["wall_s"], "shared": dict(rf.shared)}}
        if not proxy.train_lm:
            fields_["lm_val_loss"] = res["lm_loss"]
        out.append(fields_)
    return out
