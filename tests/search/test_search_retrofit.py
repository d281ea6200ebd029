"""A study whose rung 0 is scored by the retrofit family (``recall: {family: retrofit}``) through the CLI: every
trial starts from one teacher shared by both Ray workers through the cache, the winners move to a trained rung,
and report and export read the study as any other."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from hyla.search.config import load_study_config
from hyla.search.storage import load_rung_studies, open_storage
from hyla.search.study import counted
from test_search_helpers import PROXY, ray_up, study_dict

#: the retrofit family's shortest recipe: a 4-layer teacher of a few steps (checks off), 2 + 2 steps of stages
RETROFIT = {"family": "retrofit", "levels": "retrofit-tiny-mqar",
            "teacher": {"recall_steps": 8, "mix_steps": 4, "batch_size": 8, "solved_at": 0.0, "retries": 0,
                        "eval_examples": 8},
            "transfer": {"steps": 2, "batch_size": 4}, "distill": {"steps": 2, "batch_size": 4}, "pool_rows": 32,
            "eval_examples": 8, "eval_text_rows": 2, "text": {"max_docs": 20}, "device": "cpu"}


@pytest.fixture(scope="module", autouse=True)
def _ray() -> None:
    ray_up()


def test_retrofit_rung_shares_one_teacher_promotes_reports_and_exports(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from hyla.cli import main

    cache = tmp_path / "cache"
    rung0 = {"scale": "tiny", "steps": 1, "train_lm": False, "seeds": 2,
             "recall": {**RETROFIT, "cache_dir": str(cache)}}
    study = study_dict(tmp_path, "rf", n_trials=4, objectives=["recall", "memory_bytes"],
                       rungs=[{"proxy": rung0, "promote": {"rule": "pareto", "k": 2}}, {"proxy": PROXY}])
    path = tmp_path / "rf.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["search", "run", str(path), "--no-plot"]) == 0
    assert "Pareto set of rf/rung" in capsys.readouterr().out
    cfg = load_study_config(path)
    studies = load_rung_studies(open_storage(cfg.storage_url(), create=False), cfg.name)
    t0, t1 = studies[0].get_trials(), studies[1].get_trials()
    done = [t for t in t0 if t.state == TrialState.COMPLETE]  # the others: PRUNED repeats of a layout
    assert counted(t0) == 4 and len(done) == 4
    fresh = [t.user_attrs["result"] for t in done if "reused_from" not in t.user_attrs]
    assert fresh and all(r["proxy_family"] == "retrofit" for r in fresh)
    for r in fresh:  # two data-order seeds, each scored on the level set, with its spread
        assert len(r["seed_values"]["recall"]) == 2 and set(r["recall_tasks"]) == {
            "mqar@64x2", "mqar@64x4", "mqar@64x8", "mqar@64x16"}
        assert r["kl_to_teacher"] is not None and r["lm_val_loss"] is not None
    assert len({e["teacher"] for r in fresh for e in r["family_extra"]}) == 1  # one teacher for the study
    assert len(list((cache / "teacher").glob("*.pt"))) == 1  # trained once, the other worker loaded it
    assert 1 <= counted(t1) <= 2
    assert main(["analysis", "report", str(path), "--out", str(tmp_path / "report.html")]) == 0
    assert "retrofit" in (tmp_path / "report.html").read_text()
    assert main(["analysis", "export", str(path), "--rung", "0", "--pick", "best-recall",
                 "--out", str(tmp_path / "export")]) == 0
    assert (tmp_path / "export" / "layout.yaml").exists()
