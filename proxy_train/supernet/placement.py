"""Where attention must stay: per-layer importance and a beam search over placements, scored by inheritance.

Both work on a supernet whose layers offer the teacher's attention and one linear kind (the placement supernet of
``hyla analysis placement``, or a study's), and on `EvalRows`; every candidate is scored by `score_layouts`, so a
search step's candidates run in one routed pass.

- `importance`: for each layer ``i``, the layout that keeps attention everywhere except at ``i`` (the teacher with
  one layer linear): its KL to the teacher and its recall and LM-loss change (arXiv 2512.20569's per-layer
  importance, read off the supernet instead of one distillation per layer).
- `beam_search`: PostNAS's search under a budget of ``k`` attention layers: start from the all-linear layout, add
  one attention layer at a time to each of the ``beam`` best partial placements, keep the ``beam`` best of all
  extensions (ranked by `OBJECTIVES`), stop at ``k``. ``beam = 1`` is the greedy search.
- `placement_supernet` builds the supernet both need from a teacher (stage 1, then distillation on placements
  with the budget's share of attention), `search_placement` runs both and compares the result with the uniform
  placement and the most important layers: ``hyla analysis placement`` and ``benchmarks/bench_supernet.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.retrofit.transfer import load_transfer
from hyla.proxy_train.supernet.choices import LayerSampler
from hyla.proxy_train.supernet.config import SupernetScore, SupernetTrain
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.score import EvalRows, score_layouts
from hyla.proxy_train.supernet.store import load_or_train
from hyla.space.layout import ATTN, LayerSpec
from hyla.space.search_space import placement_indices

#: how candidates rank (smaller key = better): recall first (ties: lower KL), the KL alone, or the LM loss
OBJECTIVES: dict[str, Callable[[dict[str, Any]], tuple[float, ...]]] = {
    "recall": lambda s: (-s["recall"], s["kl_to_teacher"]),
    "kl": lambda s: (s["kl_to_teacher"],),
    "lm": lambda s: (s["lm_val_loss"],),
}


def placed(n_layers: int, attention: Sequence[int], linear: LayerSpec) -> tuple[LayerSpec, ...]:
    """Layer specs with whole attention at ``attention`` and ``linear`` elsewhere."""
    keep = set(attention)
    return tuple(LayerSpec(mixer=ATTN) if i in keep else linear for i in range(n_layers))


def importance(net: Supernet, rows: EvalRows, linear: LayerSpec, cfg: SupernetScore) -> list[dict[str, Any]]:
    """Per layer: ``kl`` (KL to the teacher when that layer alone is ``linear``), ``recall_drop`` and
    ``lm_increase`` against the teacher's own scores, and the scores themselves."""
    n = net.shape.n_layers
    teacher = tuple(LayerSpec(mixer=ATTN) for _ in range(n))
    layouts = [teacher] + [tuple(linear if j == i else s for j, s in enumerate(teacher)) for i in range(n)]
    scores = score_layouts(net, rows, layouts, cfg)
    base = scores[0]
    return [{"layer": i, "kl": s["kl_to_teacher"], "recall_drop": base["recall"] - s["recall"],
             "lm_increase": s["lm_val_loss"] - base["lm_val_loss"], "scores": s} for i, s in enumerate(scores[1:])]


@dataclass
class Candidate:
    """A placement (sorted attention layers) and its inherited scores."""

    attention: tuple[int, ...]
    scores: dict[str, Any] = field(default_factory=dict)


def beam_search(net: Supernet, rows: EvalRows, linear: LayerSpec, k: int, cfg: SupernetScore, beam: int = 3,
                objective: str = "recall", allowed: Sequence[int] | None = None,
                log: Callable[[str], None] = print) -> tuple[Candidate, list[list[Candidate]]]:
    """The best placement of ``k`` attention layers (module docstring).

    Args:
        net: a supernet offering attention and ``linear`` at every layer in ``allowed``.
        rows: the held-out rows.
        linear: the linear layer spec of every non-attention layer.
        k: attention layers to place.
        cfg: scoring settings (chunk size).
        beam: partial placements kept per step.
        objective: a key of `OBJECTIVES`.
        allowed: layers that may hold attention (default: all).
        log: one line per step.

    Returns:
        ``(best, trace)``: ``trace[t]`` is the beam after ``t + 1`` layers were placed, best first.
    """
    n = net.shape.n_layers
    where = list(range(n)) if allowed is None else sorted(set(allowed))
    if objective not in OBJECTIVES:
        raise ConfigError(f"placement objective: {objective!r} is not allowed; expected one of {', '.join(OBJECTIVES)}")
    if not 0 <= k <= len(where):
        raise ConfigError(f"placement: --attention-layers {k} must be in [0, {len(where)}]")
    if beam < 1:
        raise ConfigError(f"placement: beam {beam} must be >= 1")
    rank = OBJECTIVES[objective]
    frontier = [Candidate(())]
    trace: list[list[Candidate]] = []
    for step in range(k):
        grown = sorted({tuple(sorted((*c.attention, j))) for c in frontier for j in where if j not in c.attention})
        scores = score_layouts(net, rows, [placed(n, a, linear) for a in grown], cfg)
        ranked = sorted((Candidate(a, s) for a, s in zip(grown, scores)), key=lambda c: (rank(c.scores), c.attention))
        frontier = ranked[:beam]
        trace.append(frontier)
        best = frontier[0]
        log(f"placement step {step + 1}/{k}: {len(grown)} candidates; best {list(best.attention)} recall "
            f"{best.scores['recall']:.3f} KL {best.scores['kl_to_teacher']:.4f}")
    if k == 0:
        frontier = [Candidate((), score_layouts(net, rows, [placed(n, (), linear)], cfg)[0])]
    return frontier[0], trace


def placement_supernet(teacher: Any, teacher_key: str, data: Any, rcfg: Any, linear: LayerSpec, k: int, steps: int,
                       device: Any, seed: int = 0, build: Any = None, log: Callable[[str], None] = print
                       ) -> tuple[Supernet, dict[str, Any], Any]:
    """The placement supernet of ``teacher`` (every layer: its attention or ``linear``), started from issue 31's
    stage 1 for ``linear`` (cached) and distilled ``steps`` steps on placements that keep each layer's attention
    with probability ``k / n_layers`` (cached). Returns ``(supernet, its cache info, the stage-1 transfer)``."""
    n = teacher.layout.n_layers
    stage1 = load_transfer(teacher, teacher_key, linear, rcfg, data, device, log)
    choices = tuple((LayerSpec(mixer=ATTN), linear) for _ in range(n))
    data_recipe = {"levels": rcfg.levels, "seq_len": rcfg.seq_len, "text": dataclasses.asdict(rcfg.text),
                   "pool_rows": rcfg.pool_rows}
    net, info = load_or_train(teacher, teacher_key, choices, LayerSampler(choices, p_attention=k / n), data,
                              data_recipe, SupernetTrain(steps=steps, seed=seed, init="transfer"), device,
                              build=build or HylaLM, transfer=lambda spec: stage1.states,
                              transfer_key=f"{teacher_key}:{linear.to_obj()}", cache_root=rcfg.cache_dir, log=log)
    return net, info, stage1


def search_placement(net: Supernet, rows: EvalRows, linear: LayerSpec, k: int, cfg: SupernetScore, beam: int = 3,
                     objective: str = "recall", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Importance, the beam search, and the searched placement beside the uniform one (``uniform_last``) and the
    ``k`` most important layers, all scored by inheritance: ``{"attention", "candidates", "importance", "trace"}``."""
    n = net.shape.n_layers
    imp = importance(net, rows, linear, cfg)
    best, trace = beam_search(net, rows, linear, k, cfg, beam, objective, log=log)
    top = tuple(sorted(sorted(range(n), key=lambda i: -imp[i]["kl"])[:k]))
    compared = {"searched": best.attention, "uniform": placement_indices("uniform_last", n, k), "importance": top}
    scores = score_layouts(net, rows, [placed(n, a, linear) for a in compared.values()], cfg)
    return {"attention": list(best.attention),
            "candidates": {name: {"attention": list(a), "scores": s} for (name, a), s in zip(compared.items(), scores)},
            "importance": [{key: v for key, v in r.items() if key != "scores"} for r in imp],
            "trace": [[{"attention": list(c.attention), **c.scores} for c in step] for step in trace]}
