"""The README's quickstart study: its rung-0 front must separate layouts by recall beyond the seed noise, its
trials must be distinct layouts, and its final front must hold a hybrid (not only the Transformer and pure GDN).

This runs examples/quickstart.yaml as shipped (in a temporary run directory): 7 trials of 4-layer x 64-wide
GatedDeltaNet/attention layouts, 3 seeds each, then the 2 promoted ones at rung 1, on real Ray workers (about 4
minutes on 2 idle cores).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyla.search.config import load_study_config
from hyla.space.layout import Layout
from conftest import REPO

QUICKSTART = REPO / "examples" / "quickstart.yaml"
Z = 2.0  # the interval half-width (in standard errors) that the noise-aware promotion uses too


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_front_separates_attention_from_pure_linear(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from hyla.search.rungs import n_seeds, objective_sems
    from hyla.search.study import run_search

    cfg = load_study_config(QUICKSTART, run_dir=str(tmp_path / "run"))
    summary = run_search(cfg, show_progress=False)
    assert summary.rungs[0].failed == 0 and summary.rungs[1].failed == 0
    from hyla.search.storage import load_rung_studies, open_storage

    storage = open_storage(cfg.storage_url(), where="test")
    rung0 = load_rung_studies(storage, cfg.name)[0].get_trials(deepcopy=False)
    done = [t for t in rung0 if t.state == TrialState.COMPLETE]
    assert len(done) == cfg.n_trials == len({t.user_attrs["layout_key"] for t in done})  # no trial on a repeat
    # the final front: a hybrid (linear layers with softmax layers or heads) is on it, whatever the extremes are
    final = [Layout.from_dict(t.user_attrs["layout"]) for t in summary.pareto]
    hybrids = [lay.layer_string() for lay in final
               if any(s.has_softmax for s in lay.layers) and any(s.mixer != "attn" for s in lay.layers)]
    assert summary.pareto_rung == 1 and hybrids, [lay.layer_string() for lay in final]
    r = cfg.objectives.index("recall")
    with_softmax, pure = [], []
    for t in rung0:
        if t.values is None:
            continue
        assert n_seeds(t) == 3
        layout = Layout.from_dict(t.user_attrs["layout"])
        mean, sem = t.values[r], objective_sems(t)[r]
        assert sem > 0 or mean > 0.99  # three seeds give a spread (zero only when every seed is perfect)
        group = with_softmax if any(spec.has_softmax for spec in layout.layers) else pure
        group.append((layout.layer_string(), mean, sem))
    assert pure and len(with_softmax) >= 2, (pure, with_softmax)
    assert "AAAA" in [lay for lay, _, _ in with_softmax]  # the Transformer is seeded into rung 0
    # every layout with softmax attention (the Transformer, layer- and head-wise hybrids) recalls more than
    # every pure linear one, beyond Z standard errors of both
    worst_softmax = min(with_softmax, key=lambda x: x[1] - Z * x[2])
    best_pure = max(pure, key=lambda x: x[1] + Z * x[2])
    assert worst_softmax[1] - Z * worst_softmax[2] > best_pure[1] + Z * best_pure[2], (with_softmax, pure)
