"""Recall generators: labels recomputed from the inputs, seeding, vocab bounds; the suite's mix and scoring."""

from __future__ import annotations

import re

import pytest
import torch

from hyla.config import ConfigError
from hyla.proxy_train.train.text import get_tokenizer
from hyla.proxy_train.tasks import (
    IGNORE, MQAR, FuzzyRecall, InContextRecall, Memorization, NeedleTask, NoisyRecall, RecallSuite, RecallTaskSpec,
    SelectiveCopying, VariableTracking, span_exact_match,
)

V = 512
TOK = get_tokenizer("byte")
HAY = ["The quick brown fox jumps over the lazy dog. " * 20, "Pack my box with five dozen liquor jugs. " * 20]


def _synthetic() -> list:
    return [MQAR(vocab_size=V, seq_len=64, num_kv_pairs=4), MQAR(vocab_size=V, seq_len=128, num_kv_pairs=16),
            InContextRecall(vocab_size=V, seq_len=64), NoisyRecall(vocab_size=V, seq_len=64),
            FuzzyRecall(vocab_size=V, seq_len=64), SelectiveCopying(vocab_size=V, seq_len=64, num_tokens=8),
            Memorization(vocab_size=V, seq_len=16)]


def _ruler() -> list:
    return [NeedleTask(tokenizer=TOK, haystack_docs=HAY, seq_len=256, kind=k, template="short", num_needles=3,
                       num_values=3, num_queries=2) for k in ("single", "multikey", "multivalue", "multiquery")] + [
        NeedleTask(tokenizer=TOK, haystack_docs=(), seq_len=512, kind="multikey"),
        VariableTracking(tokenizer=TOK, haystack_docs=HAY, seq_len=384, template="short", num_chains=2)]


@pytest.mark.parametrize("gen", _synthetic() + _ruler(), ids=lambda g: g.level)
def test_shapes_seeding_and_vocab(gen) -> None:
    x, y = gen.generate(8, seed=5)
    assert x.shape == y.shape == (8, gen.seq_len) and x.dtype == y.dtype == torch.long
    assert torch.equal(x, gen.generate(8, seed=5)[0]) and torch.equal(y, gen.generate(8, seed=5)[1])
    assert not torch.equal(x, gen.generate(8, seed=6)[0])
    assert 0 <= int(x.min()) and int(x.max()) < gen.vocab_size <= V
    scored = y[y != IGNORE]
    assert len(scored) > 0 and int(scored.min()) >= 0 and int(scored.max()) < gen.vocab_size
    if not isinstance(gen, (NeedleTask, VariableTracking)):  # synthetic symbols sit above byte text
        assert int(x.min()) >= V - gen.task_vocab >= TOK.vocab_size


def test_mqar_labels() -> None:
    g = MQAR(vocab_size=V, seq_len=128, num_kv_pairs=8)
    x, y = g.generate(16, seed=0)
    ctx = 2 * g.num_kv_pairs
    for xi, yi in zip(x.tolist(), y.tolist()):
        kv = dict(zip(xi[0:ctx:2], xi[1:ctx:2]))
        assert len(kv) == 8 and not set(kv) & set(kv.values())  # distinct keys, disjoint halves
        scored = [t for t, v in enumerate(yi) if v != IGNORE]
        assert len(scored) == 8 and all(t >= ctx and (t - ctx) % 2 == 0 for t in scored)
        assert {xi[t] for t in scored} == set(kv)  # each key queried once
        assert all(yi[t] == kv[xi[t]] for t in scored)
        assert all(xi.count(k) == 2 for k in kv)  # filler never repeats a key: only its pair and its query


def test_mqar_gaps_follow_the_power_law() -> None:
    x, y = MQAR(vocab_size=V, seq_len=256, num_kv_pairs=4, alpha=0.01).generate(200, seed=1)
    pos = (y != IGNORE).nonzero()[:, 1].float()
    assert pos.mean() < 8 + 0.4 * (256 - 8)  # short gaps favoured over a uniform spread


def _check_recall_labels(x: torch.Tensor, y: torch.Tensor) -> None:
    for xi, yi in zip(x.tolist(), y.tolist()):
        seen: dict[int, int] = {}
        for t in range(0, len(xi), 2):
            k, v = xi[t], xi[t + 1]
            if yi[t] != IGNORE:
                assert k in seen and yi[t] == seen[k] == v
            elif k in seen:
                assert seen[k] != v, "a repeated key must be scored"
            if yi[t] != IGNORE or k not in seen:
                seen.setdefault(k, v)
            assert yi[t + 1] == IGNORE


def test_in_context_recall_labels() -> None:
    _check_recall_labels(*InContextRecall(vocab_size=V, seq_len=128).generate(8, seed=0))


def test_noisy_recall_labels_and_noise() -> None:
    g = NoisyRecall(vocab_size=V, seq_len=128)
    x, y = g.generate(8, seed=0)
    noise_lo = V - g.noise_vocab
    assert (x >= noise_lo).any()  # noise present
    assert ((y != IGNORE) & (x >= noise_lo)).sum() == 0  # never scored
    _check_recall_labels(torch.where(x >= noise_lo, -1 - torch.arange(x.shape[1]), x), y)  # noise = unique keys


def test_fuzzy_recall_labels() -> None:
    g = FuzzyRecall(vocab_size=V, seq_len=64, key_len=2, value_len=3)
    x, y = g.generate(8, seed=0)
    m = g.key_len + g.value_len
    for xi, yi in zip(x.tolist(), y.tolist()):
        seen: set[tuple[int, ...]] = set()
        for s in range(0, len(xi) - m + 1, m):
            key, val = tuple(xi[s:s + 2]), xi[s + 2:s + m]
            got = yi[s + 1:s + m - 1]  # from the last key token to the second-to-last value token
            assert got == (val if key in seen else [IGNORE] * 3)
            seen.add(key)


def test_selective_copy_labels() -> None:
    g = SelectiveCopying(vocab_size=V, seq_len=64, num_tokens=8)
    x, y = g.generate(8, seed=0)
    blank, marker = V - 2, V - 1
    for xi, yi in zip(x.tolist(), y.tolist()):
        body = xi[:xi.index(marker)]
        data = [t for t in body if t != blank]
        assert len(data) == 8 and [t for t in yi if t != IGNORE] == data


def test_memorization_map_is_fixed_across_seeds() -> None:
    g = Memorization(vocab_size=V, seq_len=16)
    kv = g.mapping()
    for seed in (0, 1):
        x, y = g.generate(4, seed)
        assert all(y[i, t] == kv[int(x[i, t])] == x[i, t + 1] for i in range(4) for t in range(0, 16, 2))


def _answers(gen, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, str]]:
    out = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        first = next(t for t, v in enumerate(yi) if v != IGNORE)
        text = TOK.decode(xi[:first + 1])
        ans = TOK.decode([v for v in yi if v != IGNORE])
        # teacher-forced next-token convention: each scored answer token is the following input
        assert all(xi[t + 1] == v for t, v in enumerate(yi[:-1]) if v != IGNORE) and yi[-1] != IGNORE
        out.append((text, ans))
    return out


@pytest.mark.parametrize("kind", ["single", "multikey", "multivalue", "multiquery"])
def test_ruler_needle_answers(kind: str) -> None:
    g = NeedleTask(tokenizer=TOK, haystack_docs=HAY, seq_len=256, kind=kind, template="short", num_needles=3,
                   num_values=3, num_queries=2)
    x, y = g.generate(6, seed=0)
    for text, ans in _answers(g, x, y):
        needles = re.findall(r"The magic number for ([a-z]+-[a-z]+) is (\d{7})\. ", text)
        asked = re.search(r"\nThe magic numbers? for (.+) (?:is|are) $", text).group(1).split(", ")
        expected = {"single": 1, "multikey": 3, "multivalue": 3, "multiquery": 2}[kind]
        assert len(needles) == expected
        if kind == "multivalue":
            assert asked == [needles[0][0]] and ans == "".join(v for _, v in needles)
        else:
            book = dict(needles)
            assert len(book) == expected and ans == "".join(book[k] for k in asked)


def test_ruler_variable_tracking_answers() -> None:
    g = VariableTracking(tokenizer=TOK, haystack_docs=HAY, seq_len=384, template="short", num_chains=2,
                         num_hops=3)
    x, y = g.generate(6, seed=0)
    for text, ans in _answers(g, x, y):
        value = re.search(r"\nVariables equal to (\d+): $", text).group(1)
        holds = {a for a, b in re.findall(r"VAR ([A-Z]{5}) = (\d+)\. ", text) if b == value}
        for a, b in re.findall(r"VAR ([A-Z]{5}) = VAR ([A-Z]{5})\. ", text):  # follow the chain in text order
            if b in holds:
                holds.add(a)
        assert len(holds) == 4 and sorted(re.findall(r"[A-Z]{5}", ans)) == sorted(holds)


def test_ruler_too_short_and_bad_kind() -> None:
    with pytest.raises(ConfigError, match="ruler_multikey.seq_len: 64 is too short"):
        NeedleTask(tokenizer=TOK, seq_len=64, kind="multikey")
    with pytest.raises(ConfigError, match="ruler.kind: 'x'"):
        NeedleTask(tokenizer=TOK, seq_len=256, kind="x")


def test_span_exact_match() -> None:
    t = torch.tensor([[IGNORE, 1, 2, IGNORE, 3, 4], [IGNORE] * 6])
    p = torch.tensor([[0, 1, 2, 0, 3, 9], [0] * 6])
    s = span_exact_match(p, t)
    assert s[0] == 0.5 and torch.isnan(s[1])


def _suite(**kw) -> RecallSuite:
    return RecallSuite.named("tiny", V, TOK, HAY, **kw)


def test_suite_preset_levels_and_cap() -> None:
    s = _suite()
    assert s.levels == ("mqar@32x4", "mqar@64x8", "mqar@64x16", "icr@64", "selective_copy@64", "ruler_single@128",
                        "ruler_single@256") and s.train_seq_len == 256
    capped = _suite(seq_len_cap=128)
    assert "ruler_single@256" not in capped.levels and capped.train_seq_len == 128
    small = RecallSuite.named("small", V, TOK, HAY)
    assert "mqar@1024x64" in small.levels and "ruler_vt@1024" in small.levels


def test_suite_train_batch() -> None:
    s = _suite(seq_len_cap=128)
    x, y = s.train_batch(32, step=3, seed=0)
    assert x.shape == y.shape == (32, 128)
    x2, y2 = s.train_batch(32, step=3, seed=0)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, s.train_batch(32, step=4, seed=0)[0])
    padded = (x == TOK.pad_id).all(-1) | (x[:, 64:] == TOK.pad_id).all(-1)  # mqar@64 rows are right-padded
    assert padded.any() and (y[x == TOK.pad_id] == IGNORE).all()
    assert (y != IGNORE).sum() > 0 and int(x.max()) < V


def test_suite_eval_examples_are_held_out() -> None:
    s = _suite(seq_len_cap=128)
    ex, _ = s.eval_set("mqar@64x16", 64, 1234)
    train_rows = {tuple(r) for step in range(20) for r in s.train_batch(32, step, 0)[0].tolist()}
    assert not {tuple(r) for r in ex.tolist()} & train_rows


def test_suite_oracle_and_random_scores() -> None:
    s = _suite()
    answers: dict[tuple[int, ...], list[int]] = {}
    for level in s.levels:
        x, y = s.eval_set(level, 16, 1234)
        answers.update({tuple(a): b for a, b in zip(x.tolist(), y.tolist())})

    def oracle(inputs: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*inputs.shape, V)
        for i, row in enumerate(inputs.tolist()):
            for t, target in enumerate(answers[tuple(row)]):
                if target != IGNORE:
                    logits[i, t, target] = 1.0
        return logits

    perfect = s.evaluate(oracle, n_examples=16, batch_size=5)
    assert set(perfect) == set(s.levels) | {"recall"} and all(v == 1.0 for v in perfect.values())
    rand = s.evaluate(lambda inp: torch.randn(*inp.shape, V, generator=torch.Generator().manual_seed(0)),
                      n_examples=16)
    assert all(0.0 <= v < 0.05 for v in rand.values())  # chance is ~1/512 per token


def test_suite_recall_is_mean_over_tasks_of_level_means() -> None:
    s = _suite(seq_len_cap=128)
    x32, y32 = s.eval_set("mqar@32x4", 8, 1234)

    def one_level(inputs: torch.Tensor) -> torch.Tensor:  # perfect on mqar@32x4 only, all-zero logits elsewhere
        logits = torch.zeros(*inputs.shape, V)
        if inputs.shape == x32.shape and torch.equal(inputs, x32):
            logits.scatter_(-1, y32.clamp(min=0).unsqueeze(-1), 1.0)
        return logits

    out = s.evaluate(one_level, n_examples=8)
    assert out["mqar@32x4"] == 1.0 and out["mqar@64x8"] == out["mqar@64x16"] == 0.0
    n_tasks = len({spec.task for spec in s.specs})
    assert out["recall"] == pytest.approx((1 / 3) / n_tasks)  # one of MQAR's three levels, one of n tasks


def test_spec_parsing_and_errors() -> None:
    spec = RecallTaskSpec.from_dict({"task": "mqar", "seq_len": 64, "params": {"num_kv_pairs": 4}})
    assert spec.to_dict() == {"task": "mqar", "seq_len": 64, "params": {"num_kv_pairs": 4}}
    s = RecallSuite.from_specs([spec.to_dict()], V)
    assert s.levels == ("mqar@64x4",)
    with pytest.raises(ConfigError, match="'mqr' is not allowed"):
        RecallTaskSpec.from_dict({"task": "mqr", "seq_len": 64})
    with pytest.raises(ConfigError, match="unknown parameter 'pairs'"):
        RecallSuite.from_specs([{"task": "mqar", "seq_len": 64, "params": {"pairs": 4}}], V)
    with pytest.raises(ConfigError, match="mqar.seq_len: 60"):
        RecallSuite.from_specs([{"task": "mqar", "seq_len": 60, "params": {"num_kv_pairs": 16}}], V)
    with pytest.raises(ConfigError, match="needs a tokenizer"):
        RecallSuite.from_specs([{"task": "ruler_single", "seq_len": 256}], V)
    with pytest.raises(ConfigError, match="recall.levels: 'huge'"):
        RecallSuite.named("huge", V, TOK, HAY)
    with pytest.raises(ConfigError, match="drops every level"):
        _suite(seq_len_cap=16)
    with pytest.raises(ConfigError, match="tokenizer vocab 260 exceeds"):
        RecallSuite.from_specs([{"task": "ruler_single", "seq_len": 256}], 256, TOK)
