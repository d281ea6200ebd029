"""The metrics registry (`hyla.metrics`): one table that search and analysis both read (issue 17)."""

from __future__ import annotations

import dataclasses
import random
import subprocess
import sys
from types import SimpleNamespace

import pytest
from conftest import tiny_layout

from hyla.config import ConfigError
from hyla.metrics import (COST_AXES, DIRECTIONS, METRICS, SCORE_AXES, dominates, format_value, get_metric,
                          human_bytes, non_dominated_fronts)
from hyla.search.config import study_config_from_dict


def _accepted_objectives() -> list[str]:
    """Every objective name the study config accepts (probed through its validation, one name at a time)."""
    ok = []
    for name in [*METRICS, "lm_val_loss", "state_bytes", "speed", "value0"]:
        try:
            study_config_from_dict({"name": "t", "objectives": [name]})
        except ConfigError:
            continue
        ok.append(name)
    return ok


def _record(result: dict, values: dict | None = None):
    from hyla.analysis.study_data import TrialRecord

    return TrialRecord(study="t/rung0", number=0, rung=0, state="COMPLETE", values=values or {}, layout=None,
                       layout_string="?", layout_key="", preset=None, parent=None, feasible=True, constraints={},
                       result=result, fail_reason=None)


def test_every_accepted_objective_is_registered() -> None:
    from hyla.proxy_train.proxy.result import ProxyResult

    accepted = _accepted_objectives()
    assert accepted == list(METRICS)  # the config accepts exactly the registry, in its order
    fields = {f.name for f in dataclasses.fields(ProxyResult)}
    for name in accepted:
        m = get_metric(name)
        assert m.name == name and m.direction in DIRECTIONS and m.label
        assert m.field in fields, f"{name}: ProxyResult has no field {m.field!r}"
        assert isinstance(m.format(1234.5), str) and m.format(1234.5)
        assert (m.cost is not None) == m.exact  # exact metrics say where the cost model has them
    assert set(COST_AXES) == {m.name for m in METRICS.values() if m.exact}
    assert set(SCORE_AXES) == {m.name for m in METRICS.values() if not m.exact}
    with pytest.raises(ConfigError, match="unknown metric 'speed'"):
        get_metric("speed")
    with pytest.raises(ConfigError, match="unknown objective 'speed'"):
        study_config_from_dict({"name": "t", "objectives": ["speed"]})


def test_search_and_analysis_agree() -> None:
    """Directions, stored objectives, values read from a result, standard errors and formatting."""
    from hyla.analysis.plots import _label
    from hyla.analysis.report import format_value as report_format
    from hyla.analysis.study_data import StudyData
    from hyla.search.study import objective_values, result_sems
    from hyla.space.cost import inference_memory, param_count

    layout = tiny_layout("gla", "attn")
    names = list(METRICS)
    cfg = study_config_from_dict({"name": "t", "objectives": names, "context": 64})
    empty = StudyData(name="t", source="", config={}, objectives=(), trials=())
    assert cfg.directions == [empty.direction(n) for n in names]
    assert cfg.objective_attrs() == [{"name": n, "direction": METRICS[n].direction} for n in names]
    assert empty.metric_names() == names

    mem, pc = inference_memory(layout, 64), param_count(layout)
    result = {"lm_val_loss": 2.5, "recall": 0.75, "recall_auc": 0.5, "kl_to_teacher": 0.3, "tokens_per_s": 900.0,
              "kv_bytes": mem.kv_bytes, "state_bytes": mem.total_bytes, "params": pc.total,
              "sem": {"lm_val_loss": 0.05, "recall": 0.01, "recall_auc": 0.02, "kl_to_teacher": 0.03}}
    values = objective_values(SimpleNamespace(cfg=cfg), layout, result)
    rec = _record(result)  # analysis reads the result dict by the same fields
    assert values == [rec.metric(n) for n in names]
    assert values[names.index("memory_bytes")] == mem.total_bytes and values[names.index("params")] == pc.total
    sems = result_sems(SimpleNamespace(cfg=cfg), result)
    assert sems == [rec.sem(n) for n in names] == [0.05, 0.01, 0.02, 0.03, 0.0, 0.0, 0.0, None]
    for n, v in zip(names, values):
        assert report_format(n, v) == format_value(n, v) == METRICS[n].format(v)
        assert _label(n) == METRICS[n].label


def test_one_dominance_and_one_byte_formatter() -> None:
    from hyla.analysis import pareto
    from hyla.search import rungs
    from hyla.space import cost

    assert rungs.dominates is pareto.dominates is dominates
    assert rungs.non_dominated_fronts is non_dominated_fronts
    assert cost.human_bytes is human_bytes
    rng = random.Random(0)
    dirs = ["minimize", "maximize", "minimize"]
    pts = [[rng.choice([0.0, 1.0, 2.0]) for _ in dirs] for _ in range(40)]
    assert pareto.non_dominated(pts, dirs) == rungs.non_dominated_fronts(pts, dirs)[0]
    with pytest.raises(ConfigError, match="direction: 'up'"):
        non_dominated_fronts([[1.0]], ["up"])
    assert format_value("memory_bytes", 96 * 1024) == "96.0 KiB" and format_value("kv_bytes", 512) == "512 B"
    assert format_value("params", 1_234_567) == "1.235M" and format_value("lm_loss", 2.34567) == "2.346"
    assert format_value("value0", 0.123456) == "0.1235" and format_value("recall", None) == ""


def test_registry_imports_no_torch() -> None:
    code = "import sys, hyla.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
