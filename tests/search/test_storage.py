"""Storages (journal, SQLite, PostgreSQL), space/objective guards, config validation and promotion math."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from optuna.distributions import FloatDistribution

from hyla.config import ConfigError
from hyla.search.config import load_study_config, study_config_from_dict
from hyla.search.rungs import non_dominated_fronts, pareto_select, select_promoted
from hyla.search.prepare import prepare
from hyla.search.storage import load_rung_studies, open_storage
from hyla.search.study import counted, run_search
from postgres_server import postgres_server, unavailable_reason
from test_search_helpers import SPACE, ray_up, study_dict
from conftest import REPO

PG_SKIP = unavailable_reason()


def _small_study_on(storage: str, tmp_path: Path, name: str) -> None:
    """The same 2-trial, 2-rung study on any storage, then a name clash with another space."""
    ray_up()
    d = study_dict(tmp_path, name, n_trials=2, storage=storage,
                   rungs=[{"proxy": study_dict(tmp_path)["rungs"][0]["proxy"], "promote": {"k": 1}},
                          {"proxy": study_dict(tmp_path)["rungs"][0]["proxy"]}])
    cfg = study_config_from_dict(d, where=f"{name}.yaml")
    run_search(cfg)
    studies = load_rung_studies(open_storage(storage), name)
    assert sorted(studies) == [0, 1]
    t0 = studies[0].get_trials()
    assert counted(t0) == 2 and all(t.state == TrialState.COMPLETE for t in t0)
    (child,) = studies[1].get_trials()
    assert child.state == TrialState.COMPLETE and child.user_attrs["parent"] in {t.number for t in t0}
    for study in studies.values():  # optuna-dashboard shows these instead of "Objective 0/1/2"
        assert study.metric_names == cfg.objectives
    assert not (tmp_path / name / "study.journal").exists()  # the RDB holds the study, not a journal
    other = {**d, "space": {**SPACE, "mixers": ["gla"]}}
    with pytest.raises(ConfigError, match="already exists with another search space"):
        run_search(study_config_from_dict(other, where=f"{name}.yaml"))


def test_same_study_on_sqlite(tmp_path: Path) -> None:
    _small_study_on(f"sqlite:///{tmp_path / 'studies.db'}", tmp_path, "sq")


@pytest.mark.postgres
@pytest.mark.skipif(PG_SKIP is not None, reason=f"PostgreSQL: {PG_SKIP}")
def test_same_study_on_postgresql(tmp_path: Path) -> None:
    with postgres_server() as url:
        _small_study_on(url, tmp_path, "pg")


def test_journal_name_reused_with_other_space_or_objectives_is_refused(tmp_path: Path) -> None:
    d = study_dict(tmp_path, "guard")
    prep = prepare(study_config_from_dict(d, where="guard.yaml"))
    from hyla.search.storage import open_study

    open_study(prep.storage, "guard/rung0", prep.cfg.directions, prep.study_attrs(0))
    with pytest.raises(ConfigError, match="guard.yaml: name: study 'guard/rung0' already exists with another"):
        p2 = prepare(study_config_from_dict({**d, "space": {**SPACE, "n_layers": 2}}, where="guard.yaml"))
        open_study(p2.storage, "guard/rung0", p2.cfg.directions, p2.study_attrs(0), where="guard.yaml")
    with pytest.raises(ConfigError, match="guard.yaml: objectives: study 'guard/rung0' already exists"):
        p3 = prepare(study_config_from_dict({**d, "objectives": ["lm_loss", "params"]}, where="guard.yaml"))
        open_study(p3.storage, "guard/rung0", p3.cfg.directions, p3.study_attrs(0), where="guard.yaml")


def test_rung_studies_name_their_metrics_after_the_objectives(tmp_path: Path) -> None:
    from hyla.search.storage import open_study

    prep = prepare(study_config_from_dict(study_dict(tmp_path, "named", objectives=["recall", "params"]),
                                          where="named.yaml"))
    study = open_study(prep.storage, "named/rung0", prep.cfg.directions, prep.study_attrs(0))
    assert study.metric_names == ["recall", "params"]
    # a study created without names (an older hyla) gets them when it is opened again
    old = optuna.create_study(study_name="named/rung1", storage=prep.storage, directions=prep.cfg.directions)
    for k, v in prep.study_attrs(0).items():
        old.set_user_attr(k, v)
    assert old.metric_names is None
    again = open_study(prep.storage, "named/rung1", prep.cfg.directions, prep.study_attrs(0))
    assert optuna.load_study(study_name="named/rung1", storage=prep.storage).metric_names == ["recall", "params"]
    assert again.metric_names == ["recall", "params"]


def test_missing_psycopg2_names_the_postgres_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    for mod in ("psycopg2", "psycopg"):  # as if neither PostgreSQL driver were installed
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ConfigError) as e:
        open_storage("postgresql://me:secret@127.0.0.1:5432/db")
    assert str(e.value) == ("storage: postgresql://me:***@127.0.0.1:5432/db needs psycopg2; install hyla's postgres "
                            'extra: pip install -e ".[postgres]"')
    d = study_dict(tmp_path, "pg", storage="postgresql://me@127.0.0.1:5432/db")
    with pytest.raises(ConfigError, match=r"^pg.yaml: storage: postgresql://me@127.0.0.1:5432/db needs psycopg2; "
                                          r"install hyla's postgres extra") as e:
        prepare(study_config_from_dict(d, where="pg.yaml"))
    assert "\n" not in str(e.value) and not (tmp_path / "pg").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("change, match", [
    ({"objectives": ["lm_loss", "speed"]}, r"bad.yaml: objectives: unknown objective 'speed'"),
    ({"sampler": "cmaes"}, r"bad.yaml.sampler: 'cmaes' is not allowed"),
    ({"rungs": []}, r"bad.yaml: rungs: empty"),
    ({"rungs": [{"proxy": "tiny", "promote": {"rule": "best"}}]}, r"bad.yaml.rungs\[0\].promote.rule"),
    ({"rungs": [{"proxy": "huge"}]}, r"bad.yaml: rungs\[0\].proxy: 'huge' is neither a preset"),
    ({"rungs": [{"proxy": {"preset": "tiny", "stepz": 3}}]}, r"rungs\[0\].proxy.*stepz"),
    ({"space": {**SPACE, "mixer": ["gla"]}}, r"bad.yaml: space.*'mixer'"),
    ({"storage": "nosuchdb"}, r"bad.yaml: storage: 'nosuchdb' is not an RDB URL"),
    ({"full_runs": {"scales": ["7b"]}}, r"full_runs.scales: '7b'"),
    ({"ray": {"num_workers": 0}}, r"ray.num_workers: 0 must be >= 1"),
])
def test_bad_fields_are_one_line_config_errors(tmp_path: Path, change: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        prepare(study_config_from_dict({**study_dict(tmp_path, "bad"), **change}, where="bad.yaml"))
    assert "\n" not in str(e.value)


def test_unreachable_storage_and_ray_address_fail_before_work(tmp_path: Path) -> None:
    port = _closed_port()
    d = study_dict(tmp_path, "dead", storage=f"postgresql://u@127.0.0.1:{port}/db")
    with pytest.raises(ConfigError, match=r"dead.yaml: storage: cannot use postgresql.*refused"):
        prepare(study_config_from_dict(d, where="dead.yaml"))
    d = study_dict(tmp_path, "dead2", ray={"address": f"ray://127.0.0.1:{port}"})
    with pytest.raises(ConfigError, match=r"dead2.yaml: ray.address: .* does not answer"):
        prepare(study_config_from_dict(d, where="dead2.yaml"))
    assert not (tmp_path / "dead").exists() and not (tmp_path / "dead2").exists()


def test_run_dir_is_relative_to_the_study_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hyla.config import dump_yaml

    (tmp_path / "studies").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    path = tmp_path / "studies" / "rel.yaml"
    dump_yaml({**study_dict(tmp_path, "rel"), "run_dir": "runs/rel"}, path)
    cfg = load_study_config(path)
    assert cfg.run_path == tmp_path / "studies" / "runs" / "rel" and cfg.run_path.is_absolute()
    prep = prepare(cfg)
    assert (tmp_path / "studies" / "runs" / "rel" / "study.journal").parent.is_dir()
    assert not (tmp_path / "elsewhere" / "runs").exists()
    # the resolved copy in the run directory names the same run directory wherever it is loaded from
    assert load_study_config(prep.run_path / "study.yaml").run_path == cfg.run_path
    # an override (e.g. from code) is taken as given; no run_dir = hyla_runs/<name> in the current directory
    assert load_study_config(path, run_dir="here").run_path == Path("here")
    d = study_dict(tmp_path, "dflt")
    del d["run_dir"]
    dump_yaml(d, path)
    assert load_study_config(path).run_path == Path("hyla_runs/dflt")


def test_quickstart_example_validates(tmp_path: Path) -> None:
    path = REPO / "examples" / "quickstart.yaml"
    cfg = load_study_config(path, run_dir=str(tmp_path / "qs"))
    prep = prepare(cfg)  # space, proxies and the seed layouts (which must lie in the space) all resolve
    assert [p for p, _ in prep.seed_layouts] == list(cfg.seeds)
    assert cfg.n_trials >= 7 and len(cfg.rungs) == 2 and cfg.storage is None
    assert cfg.ray.num_workers == 2 and cfg.ray.cpus_per_worker == 1


# -- promotion math ------------------------------------------------------------------------------------------
def test_fronts_and_the_knee_first_cut() -> None:
    pts = [(1.0, 5.0), (2.0, 3.0), (3.0, 1.0), (2.5, 3.5), (4.0, 4.0)]  # minimize both
    fronts = non_dominated_fronts(pts, ["minimize", "minimize"])
    assert fronts == [[0, 1, 2], [3], [4]]
    assert pareto_select(pts, ["minimize", "minimize"], 2) == [1, 0]  # the knee, then the farthest (tie: index)
    assert pareto_select(pts, ["minimize", "minimize"], 4) == [0, 1, 2, 3]
    # maximize flips the order
    assert non_dominated_fronts([(1.0,), (2.0,)], ["maximize"]) == [[1], [0]]


def _trial(number: int, values: list[float], key: str, violation: float = 0.0) -> optuna.trial.FrozenTrial:
    t = create_trial(values=values, params={"x": float(number)}, distributions={"x": FloatDistribution(0, 100)},
                     user_attrs={"layout_key": key}, system_attrs={"constraints:mem": violation})
    t.number = number
    return t


def test_select_promoted_rules_feasibility_and_duplicates() -> None:
    dirs, names = ["minimize", "maximize"], ["lm_loss", "recall"]
    trials = [_trial(0, [3.0, 0.9], "a"), _trial(1, [2.0, 0.5], "b"), _trial(2, [2.0, 0.5], "b"),
              _trial(3, [1.0, 0.95], "c", violation=0.5), _trial(4, [4.0, 0.1], "d")]
    got = [t.number for t in select_promoted(trials, dirs, names, "pareto", 2)]
    assert got == [0, 1]  # infeasible 3 is skipped while feasible ones remain; duplicate layout 2 never promoted
    got = [t.number for t in select_promoted(trials, dirs, names, "pareto", 4)]
    assert got == [0, 1, 4, 3]
    got = [t.number for t in select_promoted(trials, dirs, names, "topk", 2, "recall")]
    assert got == [0, 1]
    assert [t.number for t in select_promoted(trials, dirs, names, "topk", 1)] == [1]
