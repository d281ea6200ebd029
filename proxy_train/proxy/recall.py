"""How a proxy scores recall: the ``recall:`` mapping of a proxy config, whose ``family`` picks the recipe.

- ``family: suite`` (`SuiteRecall`): recall rows of the recall suite (``hyla.proxy_train.tasks.suite``) mixed into
  the LM run's batches, the suite's held-out levels scored after it. It fills ``recall`` and ``recall_tasks``.
- ``family: probe`` (`hyla.proxy_train.probe.config.RecallProbeConfig`): the recall probe, MQAR trained apart from
  the LM, every seed and learning rate side by side after the LM runs. It fills ``recall``, ``recall_auc``,
  ``recall_tasks`` and ``probe``.
- ``family: supernet`` (`hyla.proxy_train.supernet.config.SupernetRecall`): scored by inheritance from one
  weight-sharing supernet over the study's space (trained once, cached); with ``train_lm: false`` it fills
  ``recall``, ``recall_tasks``, ``lm_val_loss`` and ``kl_to_teacher``, and a search sends a worker many trials per
  call (``run_many``, `batch_size`).
- ``family: retrofit`` (`hyla.proxy_train.retrofit.config.RetrofitConfig`): issue 31's teacher-initialised proxy:
  each layout starts from one cached softmax teacher (its attention layers kept, each linear layer its kind's
  stage-1 stand-in), is distilled briefly (``distill.steps``, the seed orders the data) and scored on the graded
  levels. It fills ``recall``, ``recall_tasks`` and ``kl_to_teacher`` (and ``lm_val_loss`` with ``train_lm: false``).
- ``recall: null``: no recall score.

Each family is one entry of `RECALL_FAMILIES`: its config dataclass (the mapping's other keys), the `ProxyResult`
fields it fills, and either ``in_lm_run`` (the LM run's own batches and evaluation score it) or ``run`` (called
after the LM runs of every seed). A new family (say ``retrofit``) is a config class, its ``run`` and one entry here;
no other family changes, and `hyla.config.from_mapping` parses the union from this registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hyla.config import ConfigError, variant_name
from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.retrofit.config import RetrofitConfig
from hyla.proxy_train.supernet.config import SupernetRecall
from hyla.space.layout import Layout


@dataclass(frozen=True, kw_only=True)
class SuiteRecall:
    """Recall rows mixed into the LM run (``family: suite``).

    Attributes:
        levels: a named set of suite levels (`hyla.proxy_train.tasks.suite.SUITE_LEVELS`: ``tiny``, ``small``).
        tasks: explicit suite levels (``{task, seq_len, params}`` mappings, see ``hyla.proxy_train.tasks.suite``);
            when given they replace ``levels``.
        mix: fraction of each batch's rows that are recall rows (0 = the suite is scored, not trained on). The
            loss mixes the LM and recall parts by their row shares (`hyla.proxy_train.train.trainer.mixed_loss`).
        phase_steps: if > 0, recall rows only in the last this-many steps (an LM phase, then a mixed phase).
        max_len: drop suite levels longer than this (None = keep all; levels longer than the proxy's ``seq_len``
            are evaluated but not trained on, i.e. they measure length generalisation).
        eval_examples: held-out examples per level.
    """

    levels: str = "tiny"
    tasks: tuple[dict[str, Any], ...] = ()
    mix: float = 0.25
    phase_steps: int = 0
    max_len: int | None = None
    eval_examples: int = 16

    def __post_init__(self) -> None:
        w = "recall"
        if not 0.0 <= self.mix < 1.0:
            raise ConfigError(f"{w}.mix: {self.mix} must be in [0, 1) (some rows must be LM text)")
        if self.phase_steps < 0:
            raise ConfigError(f"{w}.phase_steps: {self.phase_steps} must be >= 0")
        if self.eval_examples < 1:
            raise ConfigError(f"{w}.eval_examples: {self.eval_examples} must be >= 1")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"{w}.max_len: {self.max_len} must be >= 1 or null")

    def rows(self, batch_size: int) -> int:
        """Recall rows in a batch of ``batch_size`` rows."""
        return int(round(batch_size * self.mix))


def _run_probe(proxy: Any, layout: Layout, seeds: list[int], dev: Any, progress: bool) -> list[dict[str, Any]]:
    """The probe of every seed (`hyla.proxy_train.probe.runner.run_probe_seeds`) as per-seed result fields."""
    from hyla.proxy_train.probe.runner import run_probe_seeds  # torch: only where a probe runs

    probes = run_probe_seeds(layout, proxy.recall, seeds, proxy.init_std, dev, progress)
    return [dict(recall=p["recall"], recall_auc=p["auc"], recall_tasks=p["levels"],
                 probe={k: p[k] for k in ("lr", "auc", "per_lr", "wall_s")}) for p in probes]


def _check_probe(recall: RecallProbeConfig, layout: Layout) -> None:
    recall.check_vocab(layout.vocab_size)


@dataclass(frozen=True)
class RecallFamily:
    """One way of scoring a proxy's recall.

    Attributes:
        config: the dataclass of its fields (the ``recall:`` mapping without ``family``).
        scores: the `ProxyResult` fields it fills.
        needs: how a user asks for it (for messages: ``recall_auc needs ...``).
        in_lm_run: scored by the LM run itself (its rows ride in the LM batches); else by ``run``.
        run: ``(proxy config, layout, seeds, device, progress) -> one dict of result fields per seed``, called
            after every seed's LM run (or instead of it, ``train_lm: false``); exceptions fail the trial.
        check: ``(its config, layout) -> None``; raises ConfigError for a layout it cannot score (before work).
        run_many: ``(proxy config, layouts, seeds, device, progress) -> per layout, one dict per seed``: many
            layouts in one call (a family that scores by inheritance); with ``train_lm: false`` a search sends a
            rung's trials to a worker ``recall.batch`` at a time (`batch_size`, `run_proxies`).
    """

    config: type
    scores: frozenset[str]
    needs: str
    in_lm_run: bool = False
    run: Callable[[Any, Layout, list[int], Any, bool], list[dict[str, Any]]] | None = None
    check: Callable[[Any, Layout], None] | None = None
    run_many: Callable[[Any, list[Layout], list[int], Any, bool], list[list[dict[str, Any]]]] | None = None


def _run_supernet(proxy: Any, layout: Layout, seeds: list[int], dev: Any, progress: bool) -> list[dict[str, Any]]:
    from hyla.proxy_train.supernet.family import run  # torch: only where a supernet scores

    return run(proxy, layout, seeds, dev, progress)


def _run_supernet_many(proxy: Any, layouts: list[Layout], seeds: list[int], dev: Any,
                       progress: bool) -> list[list[dict[str, Any]]]:
    from hyla.proxy_train.supernet.family import run_many

    return run_many(proxy, layouts, seeds, dev, progress)


def _check_supernet(recall: SupernetRecall, layout: Layout) -> None:
    from hyla.proxy_train.supernet.family import check

    check(recall, layout)


def _run_retrofit(proxy: Any, layout: Layout, seeds: list[int], dev: Any, progress: bool) -> list[dict[str, Any]]:
    from hyla.proxy_train.retrofit.proxy import run_family  # torch: only where a retrofit scores

    return run_family(proxy, layout, seeds, dev, progress)


def _check_retrofit(recall: RetrofitConfig, layout: Layout) -> None:
    from hyla.proxy_train.retrofit.proxy import check

    check(recall, layout)


#: every recall family, by its ``family`` name
RECALL_FAMILIES: dict[str, RecallFamily] = {
    "suite": RecallFamily(SuiteRecall, frozenset({"recall"}), "recall: {family: suite}", in_lm_run=True),
    "probe": RecallFamily(RecallProbeConfig, frozenset({"recall", "recall_auc"}), "recall: {family: probe}",
                          run=_run_probe, check=_check_probe),
    "supernet": RecallFamily(SupernetRecall, frozenset({"recall", "lm_val_loss", "kl_to_teacher"}),
                             "recall: {family: supernet} (with train_lm: false for its LM loss)", run=_run_supernet,
                             check=_check_supernet, run_many=_run_supernet_many),
    "retrofit": RecallFamily(RetrofitConfig, frozenset({"recall", "lm_val_loss", "kl_to_teacher"}),
                             "recall: {family: retrofit} (with train_lm: false for its LM loss)", run=_run_retrofit,
                             check=_check_retrofit),
}
#: the tagged union of ``ProxyConfig.recall``: family name -> config class
RECALL_CONFIGS: dict[str, type] = {name: family.config for name, family in RECALL_FAMILIES.items()}
#: what ``ProxyConfig.recall`` holds (besides None)
RecallConfig = SuiteRecall | RecallProbeConfig | SupernetRecall | RetrofitConfig


def family_name(recall: Any) -> str:
    """The ``family`` of a recall config."""
    return variant_name(recall, RECALL_CONFIGS)


def family_of(recall: Any) -> RecallFamily:
    """The `RecallFamily` of a recall config."""
    return RECALL_FAMILIES[family_name(recall)]


def batch_size(proxy: Any) -> int:
    """Layouts a search sends a worker per call under ``proxy`` (a `ProxyConfig`): its recall family's ``batch``
    when the family scores many at once (``run_many``) and no LM run trains per layout, else 1."""
    if proxy.recall is None or proxy.train_lm or family_of(proxy.recall).run_many is None:
        return 1
    return max(1, int(getattr(proxy.recall, "batch", 1)))
