"""Supernet training, scoring by inheritance (equal to scoring the stand-alone model) and its cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hyla.proxy_train.model.loss import IGNORE, token_loss
from hyla.proxy_train.supernet.choices import SpaceSampler, layer_choices
from hyla.proxy_train.supernet.config import SupernetScore, SupernetTrain
from hyla.proxy_train.supernet.init import initialise
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.retrofit.family import suite_score
from hyla.proxy_train.supernet.score import eval_rows, finetuner, score_layouts
from hyla.proxy_train.supernet.store import load_or_train, state_key
from hyla.proxy_train.supernet.train import kl_positions, train_supernet
from hyla.proxy_train.tasks.common import level_accuracy
from hyla.space.search_space import SearchSpace

import toy

CPU = torch.device("cpu")


def test_kl_positions_stop_at_each_recall_rows_last_answer() -> None:
    targets = torch.full((3, 6), IGNORE)
    targets[1, 2] = targets[2, 4] = 7
    mask = kl_positions(targets, n_text=1)
    assert mask[0].all()
    assert mask[1].tolist() == [True, True, True, False, False, False]
    assert mask[2].tolist() == [True] * 5 + [False]


def test_training_moves_only_the_branches_and_lowers_the_kl() -> None:
    # a peaked teacher whose attention adds nothing: fresh branches (which add something) are far from it, and
    # distillation must teach every branch to be silent too (what it has to learn is known, and quick to learn)
    teacher, data = toy.teacher(std=0.2), toy.ToyData()
    for block in teacher.blocks:
        torch.nn.init.zeros_(block.mixer.o_proj.weight)
    space = SearchSpace(scale="mini", n_layers=3, mixers=("gla",), placements=("free",), n_attention=(0,))
    net = Supernet(teacher, layer_choices(space))
    initialise(net, "fresh", seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rows = eval_rows(data, teacher, SupernetScore(eval_examples=8, eval_text_rows=8), CPU)
    rng = np.random.default_rng(9)
    layouts = [SpaceSampler(space)(rng) for _ in range(6)]
    kl_before = np.mean([s["kl_to_teacher"] for s in score_layouts(net, rows, layouts, SupernetScore())])
    cfg = SupernetTrain(steps=30, batch_size=8, layouts_per_step=2, lr=3e-3, warmup=2, init="fresh", task_weight=0)
    train_supernet(net, teacher, data, SpaceSampler(space), cfg, CPU, log=lambda _: None)
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("base."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("branches."))
    kl_after = np.mean([s["kl_to_teacher"] for s in score_layouts(net, rows, layouts, SupernetScore())])
    assert kl_after < 0.2 * kl_before, (kl_before, kl_after)


def test_inherited_scores_are_the_standalone_models_scores() -> None:
    teacher, data = toy.teacher(), toy.ToyData()
    net = Supernet(teacher, layer_choices(toy.SPACE))
    initialise(net, "fresh", seed=1)
    rows = eval_rows(data, teacher, SupernetScore(eval_examples=16, eval_text_rows=8), CPU)
    assert [n for _, n in rows.buckets][-1] <= 16 < rows.buckets[0][1] == 32  # the short level runs unpadded
    rng = np.random.default_rng(0)
    layouts = [SpaceSampler(toy.SPACE)(rng) for _ in range(6)]
    scores = score_layouts(net, rows, layouts, SupernetScore(chunk=4))
    for layers, got in zip(layouts, scores):
        model = net.extract(net.layout_of(layers)).eval()
        levels = {name: level_accuracy(lambda x: model(x)[0], x[:16], y[:16], 8) for name, (x, y) in data.eval.items()}
        assert got["recall_tasks"] == pytest.approx(levels, abs=1e-6)  # answer-only logits, summed on the device
        assert got["recall"] == pytest.approx(suite_score(levels), abs=1e-6)
        tx, ty = data.eval_text
        with torch.no_grad():
            assert abs(got["lm_val_loss"] - float(token_loss(model(tx[:8])[0], ty[:8]))) < 1e-5
        assert got["kl_to_teacher"] >= 0
    teacher_score = score_layouts(net, rows, [tuple(net.shape.layers)], SupernetScore())[0]
    assert abs(teacher_score["kl_to_teacher"]) < 1e-6


def test_finetune_before_scoring_leaves_the_supernet_alone() -> None:
    teacher, data = toy.teacher(), toy.ToyData()
    net = Supernet(teacher, layer_choices(toy.SPACE))
    initialise(net, "fresh", seed=2)
    key = state_key(net)
    score_cfg = SupernetScore(eval_examples=8, eval_text_rows=4, finetune_steps=3, finetune_lr=3e-3)
    rows = eval_rows(data, teacher, score_cfg, CPU)
    layers = SpaceSampler(toy.SPACE)(np.random.default_rng(3))
    tune = finetuner(net, teacher, data, SupernetTrain(batch_size=4, layouts_per_step=1, init="fresh"), score_cfg, CPU)
    tuned = score_layouts(net, rows, [layers], score_cfg, finetune=tune)[0]
    inherited = score_layouts(net, rows, [layers], score_cfg)[0]
    assert state_key(net) == key
    assert tuned["kl_to_teacher"] != inherited["kl_to_teacher"]


_WORKER = textwrap.dedent("""
    import json, sys, torch
    sys.path.insert(0, {tests!r})
    import toy
    from hyla.proxy_train.supernet.choices import SpaceSampler, layer_choices
    from hyla.proxy_train.supernet.config import SupernetTrain
    from hyla.proxy_train.supernet.store import load_or_train, state_key
    torch.set_num_threads(1)
    cfg = SupernetTrain(steps=3, batch_size=4, layouts_per_step=2, init="fresh")
    net, info = load_or_train(toy.teacher(), "toy-teacher", layer_choices(toy.SPACE), SpaceSampler(toy.SPACE),
                              toy.ToyData(), {{"toy": 1}}, cfg, torch.device("cpu"), cache_root={root!r},
                              log=lambda _: None)
    print(json.dumps({{"cached": info["cached"], "state": state_key(net), "key": info["key"]}}))
""")


def test_cache_trains_once_for_concurrent_workers(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=str(Path(__file__).parent), root=str(tmp_path / "cache")))
    procs = [subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o["cached"] for o in outs) == [False, True]
    assert outs[0]["state"] == outs[1]["state"] and outs[0]["key"] == outs[1]["key"]
    assert len(list((tmp_path / "cache" / "supernet").glob("*.pt"))) == 1
    # another recipe is another entry
    cfg = SupernetTrain(steps=3, batch_size=4, layouts_per_step=2, init="fresh", seed=1)
    _, info = load_or_train(toy.teacher(), "toy-teacher", layer_choices(toy.SPACE), SpaceSampler(toy.SPACE),
                            toy.ToyData(), {"toy": 1}, cfg, CPU, cache_root=str(tmp_path / "cache"), log=lambda _: None)
    assert not info["cached"] and info["key"] != outs[0]["key"]
