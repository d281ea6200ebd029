"""Per-layer importance and the beam search find the layers whose attention matters."""

from __future__ import annotations

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.supernet.choices import Choices
from hyla.proxy_train.supernet.config import SupernetScore
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.placement import beam_search, importance, placed
from hyla.proxy_train.supernet.score import eval_rows
from hyla.space.layout import ATTN, LayerSpec

import toy

GLA = LayerSpec(mixer="gla")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def net_and_rows():
    """A 6-layer teacher whose attention adds something only at layers 1 and 4, and silent GLA branches: the
    layouts that keep attention at {1, 4} are the teacher exactly."""
    torch.manual_seed(0)
    teacher = HylaLM(toy.SPACE.base_layout([ATTN] * 6))
    teacher.reset_parameters(std=0.2)
    for i, block in enumerate(teacher.blocks):
        if i not in (1, 4):
            torch.nn.init.zeros_(block.mixer.o_proj.weight)
    choices: Choices = tuple((LayerSpec(mixer=ATTN), GLA) for _ in range(6))
    net = Supernet(teacher, choices)
    for layer in net.branches.values():
        torch.nn.init.zeros_(layer["gla"].o_proj.weight)
    return net, eval_rows(toy.ToyData(), teacher, SupernetScore(eval_examples=8, eval_text_rows=8), CPU)


def test_importance_names_the_layers_that_matter(net_and_rows) -> None:
    net, rows = net_and_rows
    imp = importance(net, rows, GLA, SupernetScore())
    kls = [r["kl"] for r in imp]
    assert {i for i, kl in enumerate(kls) if kl > 1e-3} == {1, 4}
    assert all(kl < 1e-9 for i, kl in enumerate(kls) if i not in (1, 4))


@pytest.mark.parametrize("beam", [1, 3])
def test_beam_search_places_attention_where_it_matters(net_and_rows, beam: int) -> None:
    net, rows = net_and_rows
    best, trace = beam_search(net, rows, GLA, 2, SupernetScore(chunk=8), beam=beam, objective="kl", log=lambda _: None)
    assert best.attention == (1, 4) and best.scores["kl_to_teacher"] < 1e-9
    assert len(trace) == 2 and len(trace[0]) == min(beam, 6) and trace[0][0].attention in ((1,), (4,))
    assert placed(6, best.attention, GLA)[1].is_attention


def test_bad_budgets_are_refused(net_and_rows) -> None:
    net, rows = net_and_rows
    with pytest.raises(ConfigError, match="attention-layers 7"):
        beam_search(net, rows, GLA, 7, SupernetScore())
    with pytest.raises(ConfigError, match="objective"):
        beam_search(net, rows, GLA, 1, SupernetScore(), objective="speed")
