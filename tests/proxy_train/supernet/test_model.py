"""The supernet's paths are the layouts' own models: branch selection, batched routing, sampling coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.supernet.choices import LayerSampler, SpaceSampler, layer_choices
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.supernet.route import prefix_order, run_many
from hyla.space.layout import ATTN, LayerSpec
from hyla.space.search_space import HeadwiseSpace, SearchSpace, layout_to_params

from conftest import tiny_layout

#: every kind, head-wise layers and windows, free placement over 4 layers of the tiny scale
WIDE = SearchSpace(scale="tiny", n_layers=4, mixers=("gla", "hgrn2", "hgrn", "deltanet", "gdn", "mamba2", "retnet"),
                   per_layer_mixer=True, placements=("free",), n_attention=(0,),
                   headwise=HeadwiseSpace(heads=(0, 1), per_layer=True), windows=(None, 8), windows_per_layer=True)


def _perturbed(net: Supernet, seed: int = 0) -> Supernet:
    """Every weight moved off its init (norm weights, bound tables and zero-initialised parts included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


@pytest.fixture(scope="module")
def wide_net() -> Supernet:
    torch.manual_seed(0)
    return _perturbed(Supernet(HylaLM(WIDE.base_layout([ATTN] * 4)), layer_choices(WIDE)))


def _layouts(strings: list[str]) -> list[tuple[LayerSpec, ...]]:
    return [tuple(LayerSpec.from_obj(s) for s in row.split()) for row in strings]


HAND = _layouts([
    "attn hgrn hgrn2 attn@8",  # bounded layers 1 and 2 read different tables (hgrn: d, hgrn2: its forget dim)
    "attn hgrn2+a1@8 gla attn",  # head-wise with a window, bounded
    "gdn+a1 deltanet mamba2 retnet+a1",
    "attn attn attn attn",
    "attn hgrn hgrn2 gla",  # shares the first three layers with the first layout
    "hgrn hgrn hgrn hgrn",  # hgrn at layer 0: no bound there, as in HylaLM
])


def test_every_path_equals_its_standalone_model(wide_net: Supernet) -> None:
    ids = torch.randint(0, 512, (3, 16), generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    layouts = HAND + [SpaceSampler(WIDE)(rng) for _ in range(8)]
    nodes = run_many(wide_net, ids, layouts)
    assert sorted(m for n in nodes for m in n.members) == list(range(len(layouts)))
    with torch.no_grad():
        for node in nodes:
            routed = wide_net.base.logits(node.x)
            for m in node.members:
                standalone = wide_net.extract(wide_net.layout_of(layouts[m]))
                assert isinstance(standalone, HylaLM)
                ref = standalone(ids)[0]
                torch.testing.assert_close(routed, ref, atol=1e-5, rtol=0)
                torch.testing.assert_close(wide_net(ids, layouts[m]), ref, atol=1e-5, rtol=0)


def test_training_rows_route_per_layout(wide_net: Supernet) -> None:
    ids = torch.randint(0, 512, (6, 12), generator=torch.Generator().manual_seed(2))
    rows = [torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([2, 5])]
    layouts = HAND[:3]
    nodes = run_many(wide_net, ids, layouts, rows=rows)
    with torch.no_grad():
        for node in nodes:
            (m,) = node.members
            ref = wide_net.extract(wide_net.layout_of(layouts[m]))(ids[rows[m]])[0]
            torch.testing.assert_close(wide_net.base.logits(node.x), ref, atol=1e-5, rtol=0)


def test_gradients_reach_shared_teacher_weights(wide_net: Supernet) -> None:
    """A head-wise path's softmax heads are slices of the teacher's projections, not copies."""
    ids = torch.randint(0, 512, (2, 8))
    wide_net.zero_grad()
    wide_net(ids, HAND[1]).sum().backward()
    q = wide_net.teacher_attention(1).q_proj.weight.grad
    hd = wide_net.shape.head_dim
    assert q is not None and q[:hd].abs().sum() > 0 and q[hd:].abs().sum() == 0  # only the kept head
    wide_net.zero_grad()


def test_gqa_teacher_heads_read_their_kv_head() -> None:
    teacher = HylaLM(tiny_layout("attn", "attn", "attn", num_heads=4, num_kv_heads=2))
    choices = ((LayerSpec(mixer=ATTN),), tuple(LayerSpec.from_obj(s) for s in ("attn", "gla+a3", "gla+a1@4")),
               (LayerSpec(mixer=ATTN, window=4), LayerSpec(mixer="gdn")))
    net = _perturbed(Supernet(teacher, choices), seed=3)
    ids = torch.randint(0, 512, (2, 10))
    for layers in _layouts(["attn gla+a3 attn@4", "attn gla+a1@4 gdn"]):
        with torch.no_grad():
            ref = net.extract(net.layout_of(layers))(ids)[0]
            torch.testing.assert_close(net(ids, layers), ref, atol=1e-5, rtol=0)


def test_layouts_outside_the_choices_are_refused(wide_net: Supernet) -> None:
    with pytest.raises(ConfigError, match=r"layers\[1\] 'gla\+a2'"):
        wide_net.extract(wide_net.layout_of(_layouts(["attn gla+a2 attn attn"])[0]))
    with pytest.raises(ConfigError, match="every layer must be full softmax attention"):
        Supernet(HylaLM(tiny_layout("attn", "gla")), layer_choices(WIDE)[:2])


def test_structured_placements_hold_only_reachable_paths() -> None:
    space = SearchSpace(scale="tiny", mixers=("gla", "gdn"), ratios=(6, 0), placements=("uniform_last",))
    choices = layer_choices(space)
    attn_layers = {i for i, c in enumerate(choices) if any(s.is_attention for s in c)}
    assert attn_layers == {5, 11, 17, 23}
    assert all({s.mixer for s in c if not s.is_attention} == {"gla", "gdn"} for c in choices)


@pytest.mark.parametrize("space", [
    WIDE,
    SearchSpace(scale="tiny", mixers=("gla", "gdn", "hgrn2"), ratios=(24, 12, 6, 3, 0),
                placements=("uniform_last", "middle"), headwise=HeadwiseSpace(heads=(0, 1)), windows=(None, 64)),
], ids=["free-per-layer", "ratios"])
def test_sampling_covers_the_space(space: SearchSpace) -> None:
    sample, rng = SpaceSampler(space), np.random.default_rng(0)
    seen: set[tuple[int, LayerSpec]] = set()
    for _ in range(600):
        layers = sample(rng)
        layout_to_params(space.base_layout(layers), space)  # every sample is a layout of the space
        seen |= set(enumerate(layers))
    want = {(i, s) for i, c in enumerate(layer_choices(space)) for s in c}
    assert seen == want


def test_layer_sampler_and_prefix_order() -> None:
    choices = tuple((LayerSpec(mixer=ATTN), LayerSpec(mixer="gla")) for _ in range(6))
    rng = np.random.default_rng(0)
    draws = np.array([[s.is_attention for s in LayerSampler(choices, 0.25)(rng)] for _ in range(2000)])
    assert abs(draws.mean() - 0.25) < 0.02
    layouts = _layouts(["gla attn", "attn gla", "gla gla", "attn attn"])
    order = prefix_order(layouts)
    assert [layouts[j][0].mixer for j in order] == ["attn", "attn", "gla", "gla"]
