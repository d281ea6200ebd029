"""The teacher's checks: a level it does not solve fails loudly or (``unsolved: drop``) is left out of every
student's scores; a teacher whose retrieval sits in one layer is retried with the next seed, then refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.retrofit import teacher as teacher_mod
from hyla.proxy_train.retrofit.config import RetrofitConfig, TeacherConfig
from hyla.proxy_train.retrofit.proxy import Retrofitter, floor_score, retrofit_data
from hyla.proxy_train.retrofit.teacher import build_model, single_layer_drops, train_teacher
from hyla.space.presets import Scale

SCALE = Scale("retrofit-test", 4, 32, 2, 64, 512)
LEVELS = "retrofit-tiny-mqar"


def _cfg(cache: Path, **teacher: object) -> RetrofitConfig:
    return RetrofitConfig.from_dict({
        "levels": LEVELS, "teacher": {"recall_steps": 4, "mix_steps": 2, "batch_size": 4, "eval_examples": 8,
                                      "robust_at": 0.0, "retries": 0, **teacher},
        "transfer": {"steps": 2, "batch_size": 2}, "distill": {"steps": 2, "batch_size": 2}, "pool_rows": 16,
        "eval_examples": 8, "eval_text_rows": 2, "text": {"max_docs": 20}, "cache_dir": str(cache), "device": "cpu"})


def _fake_training(monkeypatch: pytest.MonkeyPatch, per_seed: dict[int, dict[str, float]]) -> list[int]:
    seen: list[int] = []

    def train_once(layout, cfg, data, seed, device, log=print):  # noqa: ANN001, ANN202
        seen.append(seed)
        torch.manual_seed(seed)
        return build_model(teacher_mod.teacher_layout(layout), cfg.prev_token), dict(per_seed[seed])

    monkeypatch.setattr(teacher_mod, "train_once", train_once)
    return seen


def test_unsolved_level_fails_by_default_and_is_dropped_when_asked(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    layout = SCALE.layout(["attn"] * 4)
    cfg = _cfg(tmp_path)
    data = retrofit_data(layout, cfg)
    scores = {0: dict.fromkeys(data.level_names, 1.0) | {"mqar@64x16": 0.3},
              1: dict.fromkeys(data.level_names, 0.0) | {"mqar@64x2": 0.95}}
    seen = _fake_training(monkeypatch, scores)
    with pytest.raises(ConfigError, match=r"level mqar@64x16 scored 0.300 < solved_at 0.9"):
        train_teacher(layout, TeacherConfig(retries=0, robust_at=0.0), data, torch.device("cpu"))
    run = train_teacher(layout, TeacherConfig(retries=1, robust_at=0.0, unsolved="drop"), data, torch.device("cpu"),
                        log=lambda s: None)
    assert seen[-2:] == [0, 1] and run.seed == 0 and run.dropped == ("mqar@64x16",)  # the seed solving most
    # students of a teacher with a dropped level are not scored on it, nor is the floor
    rf = Retrofitter(layout, _cfg(tmp_path, solved_at=0.5, unsolved="drop"), log=lambda s: None)
    assert rf.teacher.dropped == ("mqar@64x16",)
    res = rf.score_seed(SCALE.layout(["gla", "attn", "gla", "attn"]), 0)
    assert set(res["levels"]) == set(data.level_names) - {"mqar@64x16"} and res["dropped"] == ["mqar@64x16"]
    assert floor_score(rf.data, rf.teacher.dropped) > floor_score(rf.data)  # 16 pairs has the lowest floor
    # a teacher that solves nothing still fails
    with pytest.raises(ConfigError, match="solved_at"):
        train_teacher(layout, TeacherConfig(seed=1, retries=0, solved_at=0.99, robust_at=0.0, unsolved="drop"),
                      data, torch.device("cpu"))


def test_teacher_with_retrieval_in_one_layer_is_retried_then_refused(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    layout = SCALE.layout(["attn"] * 4)
    data = retrofit_data(layout, _cfg(tmp_path))
    seen = _fake_training(monkeypatch, {s: dict.fromkeys(data.level_names, 1.0) for s in range(3)})
    keep = {0: [0.2, 1.0, 1.0, 1.0], 1: [1.0, 0.9, 0.3, 1.0], 2: [0.8, 0.7, 0.9, 1.0]}
    monkeypatch.setattr(teacher_mod, "single_layer_drops", lambda model, data, device: keep[seen[-1]])
    run = train_teacher(layout, TeacherConfig(retries=2, robust_at=0.5), data, torch.device("cpu"),
                        log=lambda s: None)
    assert run.seed == 2 and seen == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"robustness \(share kept without layer 2\) 0.300 < robust_at 0.5"):
        train_teacher(layout, TeacherConfig(seed=1, retries=0, robust_at=0.5), data, torch.device("cpu"),
                      log=lambda s: None)


def test_single_layer_drops_zero_exactly_one_layer(tmp_path: Path) -> None:
    layout = SCALE.layout(["attn"] * 4)
    data = retrofit_data(layout, _cfg(tmp_path))
    torch.manual_seed(0)
    model = build_model(layout, prev_token=True).eval()
    drops = single_layer_drops(model, data, torch.device("cpu"), examples=8)
    assert len(drops) == 4 and all(0.0 <= d <= 1.0 for d in drops)
    for i in range(4):  # the same as zeroing that layer's output projection
        saved = model.blocks[i].mixer.o_proj.weight.detach().clone()
        with torch.no_grad():
            model.blocks[i].mixer.o_proj.weight.zero_()
        levels = teacher_mod.level_scores(model, data, torch.device("cpu"), examples=8)
        with torch.no_grad():
            model.blocks[i].mixer.o_proj.weight.copy_(saved)
        assert drops[i] == pytest.approx(sum(levels.values()) / len(levels))
    assert not any(h for b in model.blocks for h in b.mixer._forward_hooks.values())  # hooks removed
