"""A study whose rung 0 is scored by a supernet: trials go to workers in batches, winners move to a trained rung."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hyla.search.config import study_config_from_dict
from hyla.search.prepare import prepare
from hyla.search.storage import load_rung_studies
from hyla.search.study import counted, run_search
from test_search_helpers import PROXY, SPACE, ray_up, study_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy_train" / "supernet"))
from test_family import RETROFIT  # noqa: E402 (the supernet family's shortest recipe)


@pytest.fixture(scope="module", autouse=True)
def _ray() -> None:
    ray_up()


def test_supernet_rung_scores_in_batches_and_promotes(tmp_path: Path) -> None:
    rung0 = {"scale": "tiny", "steps": 1, "train_lm": False,
             "recall": {"family": "supernet", "retrofit": {**RETROFIT, "cache_dir": str(tmp_path / "cache")},
                        "train": {"steps": 4, "batch_size": 4, "layouts_per_step": 2},
                        "score": {"eval_examples": 8, "eval_text_rows": 4}, "batch": 5}}
    cfg = study_config_from_dict(study_dict(tmp_path, "sn", n_trials=10, objectives=["recall", "memory_bytes"],
                                            rungs=[{"proxy": rung0, "promote": {"rule": "pareto", "k": 2}},
                                                   {"proxy": PROXY}]), where="sn.yaml")
    prep = prepare(cfg)
    assert prep.proxies[0].recall.space == prep.space  # the study hands the supernet its own space
    run_search(cfg)
    studies = load_rung_studies(prep.storage, cfg.name)
    t0, t1 = studies[0].get_trials(), studies[1].get_trials()
    assert counted(t0) == 10 and all(t.state == TrialState.COMPLETE for t in t0)
    fresh = [t for t in t0 if "reused_from" not in t.user_attrs]
    assert all(t.user_attrs["result"]["proxy_family"] == "supernet" for t in fresh)
    assert len({t.user_attrs["result"]["family_extra"][0]["key"] for t in fresh}) == 1  # one supernet for all
    assert all((cfg.run_path / "trials" / "rung0" / f"trial{t.number:05d}" / "result.json").exists() for t in fresh)
    assert 1 <= len(t1) <= 2 and all(t.state == TrialState.COMPLETE for t in t1)
    for t in t1:
        if "reused_from" not in t.user_attrs:
            assert t.user_attrs["result"]["proxy_family"] == "suite"  # promoted to a from-scratch proxy


def test_space_fill_keeps_an_explicit_space(tmp_path: Path) -> None:
    from hyla.search.prepare import with_study_space

    rung0 = {"scale": "tiny", "steps": 1, "train_lm": False,
             "recall": {"family": "supernet", "space": {**SPACE, "mixers": ["gla"]}}}
    cfg = study_config_from_dict(study_dict(tmp_path, "sp", rungs=[{"proxy": rung0}], objectives=["recall"]),
                                 where="sp.yaml")
    proxy = cfg.rungs[0].proxy
    assert with_study_space(proxy, "ignored") is proxy and proxy.recall.space.mixers == ("gla",)
