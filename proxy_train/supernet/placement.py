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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyla.config import ConfigError
from hyla.proxy_train.supernet.config import SupernetScore
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.score import EvalRows, score_layouts
from hyla.space.layout import ATTN, LayerSpec

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
