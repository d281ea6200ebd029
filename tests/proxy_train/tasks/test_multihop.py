"""Multi-hop recall (``tasks/multihop.py``): labels recomputed by k lookups, no shortcut scores above chance,
seeding and bad input; and (slow) a 2-layer attention model learns the 1-hop level on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.tasks import IGNORE, MultiHop, RecallSuite, RecallTaskSpec

V = 512


def _links(row: list[int], g: MultiHop) -> list[tuple[int, int]]:
    ctx = 2 * g.pairs
    return list(zip(row[0:ctx:2], row[1:ctx:2]))


def _queries(x: torch.Tensor, y: torch.Tensor) -> list[list[tuple[int, int, int]]]:
    """Per example: (position, query token, answer) of every scored position."""
    return [[(t, xi[t], yi[t]) for t in range(len(yi)) if yi[t] != IGNORE] for xi, yi in zip(x.tolist(), y.tolist())]


@pytest.mark.parametrize("order", ["random", "chain"])
@pytest.mark.parametrize("hops", [1, 2, 4])
def test_answers_need_k_lookups(hops: int, order: str) -> None:
    g = MultiHop(vocab_size=V, seq_len=96, num_chains=4, num_hops=hops, task_vocab=32, order=order)
    x, y = g.generate(32, seed=3)
    assert x.shape == y.shape == (32, 96) and int(x.min()) >= V - 32
    values = set(range(V - 16, V))
    for row, queries in zip(x.tolist(), _queries(x, y)):
        links = _links(row, g)
        table = dict(links)
        assert len(table) == g.pairs  # every variable assigned once
        assert len([r for _, r in links if r in values]) == g.num_chains  # one value per chain: the distractors
        assert len(queries) == g.num_chains
        for _, q, answer in queries:
            cur = q
            for _ in range(hops):
                cur = table[cur]
            assert cur == answer and answer in values
            if hops > 1:
                assert table[q] not in values  # one lookup gives a variable, never the answer
        filler = [t for t in row[2 * g.pairs:] if t not in {q for _, q, _ in queries}]
        assert not set(filler) & set(table)  # variables never appear as filler
        if order == "chain":  # a link comes after the link it refers to
            where = {head: i for i, (head, _) in enumerate(links)}
            assert all(where[ref] < where[head] for head, ref in links if ref in where)


def test_seeding_and_level_key() -> None:
    g = MultiHop(vocab_size=V, seq_len=64, num_chains=4, num_hops=2, task_vocab=32)
    a, b = g.generate(8, seed=1), g.generate(8, seed=1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], g.generate(8, seed=2)[0])
    assert g.level == "hop2@64x4" and g.lookups == 2 and g.pairs == 8 and g.floor == 0.25
    assert MultiHop(vocab_size=V, seq_len=64, num_hops=2, task_vocab=32, order="chain").level == "hop2@64x4:chain"
    # two levels of one seed differ (the generator is salted by its level)
    assert not torch.equal(a[0][:, :16], MultiHop(vocab_size=V, seq_len=64, num_hops=3, task_vocab=32)
                           .generate(8, seed=1)[0][:, :16])


def test_no_positional_or_value_shortcut() -> None:
    """Rules that read the answer off positions or off the values seen score about chance (1 / chains)."""
    g = MultiHop(vocab_size=V, seq_len=128, num_chains=4, num_hops=2, task_vocab=64)
    x, y = g.generate(2000, seed=0)
    values = set(range(V - 32, V))
    rules = {"first value": 0, "last value": 0, "value next to the query's link": 0, "most recent value": 0}
    offsets_q, offsets_link = set(), set()
    n = 0
    for row, queries in zip(x.tolist(), _queries(x, y)):
        links = _links(row, g)
        vals = [(i, r) for i, (_, r) in enumerate(links) if r in values]
        where = {head: i for i, (head, _) in enumerate(links)}
        for pos, q, ans in queries:
            n += 1
            i = where[q]
            rules["first value"] += vals[0][1] == ans
            rules["last value"] += vals[-1][1] == ans
            rules["value next to the query's link"] += min(vals, key=lambda v: abs(v[0] - i))[1] == ans
            before = [r for j, r in vals if j < i]
            rules["most recent value"] += (before[-1] if before else vals[-1][1]) == ans
            ans_link = next(j for j, r in vals if r == ans)
            offsets_q.add(pos - (2 * ans_link + 1))
            offsets_link.add(i - ans_link)
    for name, hits in rules.items():
        assert hits / n < g.floor + 0.05, f"{name}: {hits / n:.3f}"
    assert len(offsets_q) > 50 and len(offsets_link) >= 2 * g.pairs - 2  # the answer sits anywhere


def test_bad_parameters() -> None:
    with pytest.raises(ConfigError, match="hop.seq_len"):
        MultiHop(vocab_size=V, seq_len=20, num_chains=4, num_hops=2)  # 16 link tokens + 8 query slots
    with pytest.raises(ConfigError, match="hop.order"):
        MultiHop(vocab_size=V, seq_len=64, order="sorted")
    with pytest.raises(ConfigError, match="hop.task_vocab"):
        MultiHop(vocab_size=V, seq_len=128, num_chains=8, num_hops=4, task_vocab=32)  # 32 variables, 16 slots
    with pytest.raises(ConfigError, match="hop.num_hops"):
        MultiHop(vocab_size=V, seq_len=64, num_hops=0)


def test_suite_builds_and_scores_hop_levels() -> None:
    suite = RecallSuite.from_specs([RecallTaskSpec("hop", 64, {"num_hops": k, "task_vocab": 32}) for k in (1, 2)], V)
    assert suite.levels == ("hop1@64x4", "hop2@64x4")

    def oracle(ctx: int):  # resolves every query by its lookups in the first ``ctx`` tokens
        def logits_fn(x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*x.shape, V)
            for b, row in enumerate(x.tolist()):
                table = dict(zip(row[0:ctx:2], row[1:ctx:2]))
                for t, tok in enumerate(row):
                    cur = tok
                    while cur in table:
                        cur = table[cur]
                    logits[b, t, cur] = 1.0
            return logits
        return logits_fn

    for gen, level in zip(suite.generators, suite.levels):
        one = RecallSuite([suite.specs[suite.levels.index(level)]], [gen], 64)
        assert one.evaluate(oracle(2 * gen.pairs), n_examples=16)[level] == 1.0
    assert suite.evaluate(oracle(2), n_examples=16)["hop2@64x4"] == 0.0  # one lookup: a variable, never a value


@pytest.mark.slow
def test_two_layer_attention_learns_one_hop() -> None:
    """The 1-hop level (MQAR with 4 pairs) is learnable by a 2-layer attention model in a few hundred steps."""
    import torch.nn.functional as F
    from hyla.proxy_train.model.lm import HylaLM
    from hyla.proxy_train.probe.build import PrevTokenEmbedding
    from hyla.space.layout import Layout

    torch.manual_seed(0)
    layout = Layout(layers=("attn", "attn"), d_model=32, vocab_size=V, mlp_hidden=64, num_heads=1)
    model = HylaLM(layout)
    model.reset_parameters(0.02 * (1024 / 32) ** 0.5)
    prev = PrevTokenEmbedding(V, 32, 0.1)
    model.add_module("prev_token_embedding", prev)
    model.embeddings.register_forward_hook(prev.hook)
    suite = RecallSuite.from_specs([RecallTaskSpec("hop", 32, {"num_hops": 1, "task_vocab": 32})], V)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    acc, step = 0.0, 0
    while step < 800 and acc <= 0.9:
        for step in range(step, step + 100):
            x, y = suite.train_batch(32, step, seed=0)
            scored = y != IGNORE
            loss = F.cross_entropy(model.logits(model.hidden(x)[0][scored]), y[scored])
            opt.zero_grad()
            loss.backward()
            opt.step()
        step += 1
        model.eval()
        acc = suite.evaluate(lambda x: model(x)[0], n_examples=128)["hop1@32x4"]
        model.train()
    assert acc > 0.9, (step, acc)
    assert np.isfinite(loss.item())
