"""The capacity-composed family (``retrofit/capacity.py``): the combination rule on hand-made curves, and one tiny
CPU measurement through the probe trainer that is cached (a second call trains nothing)."""

from __future__ import annotations

import pytest

from hyla.config import ConfigError
from hyla.proxy_train.retrofit import capacity
from hyla.proxy_train.retrofit.capacity import CapacityRecipe, Curve, capacity_score, measure_curves
from hyla.proxy_train.retrofit.family import FamilyContext, FamilyJob, suite_score
from hyla.proxy_train.tasks import RecallSuite, level_profile
from hyla.space.presets import Scale, resolve_preset

PROFILES = [level_profile(g) for g in RecallSuite.named("retrofit-tiny", 512).generators]
PAIRS = sorted({p.pairs for p in PROFILES})  # 4, 8, 12, 16, 32


def _curve(kind: str, acc: dict[int, float]) -> Curve:
    return Curve(kind, 0, acc, 1e-3, 1.0, f"key-{kind}")


ATTN = _curve("attn", {p: 1.0 for p in PAIRS})
GLA = _curve("gla", {4: 0.9, 8: 0.7, 12: 0.5, 16: 0.4, 32: 0.1})
GDN = _curve("gdn", {4: 1.0, 8: 0.9, 12: 0.8, 16: 0.6, 32: 0.2})
CURVES = {"attn": ATTN, "gla": GLA, "gdn": GDN}


def _q(acc: float, pairs: int) -> float:
    return max(0.0, (acc - 1 / pairs) / (1 - 1 / pairs))


def test_pure_layout_scores_its_measured_accuracy_on_mqar() -> None:
    score, levels, floor = capacity_score(resolve_preset("gla-pure@tiny"), PROFILES, CURVES)
    for p in PROFILES:
        if p.level.startswith("mqar"):
            assert levels[p.level] == pytest.approx(GLA.acc[p.pairs])
        else:  # k hops by linear layers: floor + (1 - floor) q^k
            assert levels[p.level] == pytest.approx(p.floor + (1 - p.floor) * _q(GLA.acc[p.pairs], p.pairs) ** p.lookups)
    assert score == pytest.approx(suite_score(levels)) and floor == pytest.approx(suite_score(
        {p.level: p.floor for p in PROFILES}))


def test_attention_layers_cover_hops_and_linear_layers_do_the_rest() -> None:
    lv = {n: capacity_score(resolve_preset(f"gla-{n}@tiny"), PROFILES, CURVES)[1] for n in ("24:1", "12:1", "6:1")}
    hop3 = next(p for p in PROFILES if p.level == "hop3@64x4")
    q = _q(GLA.acc[12], 12)
    assert lv["24:1"]["hop3@64x4"] == pytest.approx(hop3.floor + (1 - hop3.floor) * q ** 2)  # 1 attention layer
    assert lv["12:1"]["hop3@64x4"] == pytest.approx(hop3.floor + (1 - hop3.floor) * q)  # 2 attention layers
    assert lv["6:1"]["hop3@64x4"] == pytest.approx(1.0)  # 4 attention layers cover 3 hops
    assert all(v == pytest.approx(1.0) for v in lv["6:1"].values())
    # the rule's stated prediction: pure < 24:1 < 12:1 < 6:1 = 3:1 = Transformer, here with perfect attention
    s = {n: capacity_score(resolve_preset(n), PROFILES, CURVES)[0]
         for n in ("gla-pure@tiny", "gla-24:1@tiny", "gla-12:1@tiny", "gla-6:1@tiny", "gla-3:1@tiny", "transformer@tiny")}
    assert s["gla-pure@tiny"] < s["gla-24:1@tiny"] < s["gla-12:1@tiny"] < s["gla-6:1@tiny"]
    assert s["gla-6:1@tiny"] == s["gla-3:1@tiny"] == s["transformer@tiny"] == pytest.approx(1.0)


def test_imperfect_attention_and_mixed_kinds_and_too_few_layers() -> None:
    attn = _curve("attn", {p: 0.9 for p in PAIRS})
    hop2 = next(p for p in PROFILES if p.level == "hop2@64x4")
    tr = capacity_score(resolve_preset("transformer@tiny"), PROFILES, {"attn": attn})[1]
    assert tr["hop2@64x4"] == pytest.approx(hop2.floor + (1 - hop2.floor) * _q(0.9, 8) ** 2)
    mixed = resolve_preset("gla-pure@tiny")
    mixed = mixed.with_layers(["gdn"] + [s.mixer for s in mixed.layers[1:]], name="mixed")
    assert capacity_score(mixed, PROFILES, CURVES)[1]["mqar@128x32"] == pytest.approx(GDN.acc[32])  # the best kind
    two = Scale("two", 2, 32, 2, 64, 512).layout(["gla", "gla"], name="gla-2")
    assert capacity_score(two, PROFILES, CURVES)[1]["hop4@64x4"] == pytest.approx(0.25)  # 4 hops, 2 layers: floor
    with pytest.raises(ConfigError, match="no curve for 'gdn'"):
        capacity_score(resolve_preset("gdn-pure@tiny"), PROFILES, {"attn": ATTN, "gla": GLA})
    with pytest.raises(ConfigError, match="no measurement at 12 pairs"):
        _curve("gla", {4: 1.0}).q(12)


def test_measurement_is_cached(tmp_path, monkeypatch) -> None:
    scale = Scale("cap-test", 2, 16, 1, 32, 64)
    recipe = CapacityRecipe(steps=4, batch_size=4, lrs=(1e-3, 3e-3), warmup=1, eval_every=2, eval_examples=8,
                            pool_rows=16)
    args = (["gla", "attn"], scale, [2, 4], 16, recipe, [0, 1], 1, "cpu", str(tmp_path))
    first = measure_curves(*args, log=lambda _: None)
    assert set(first) == {("gla", 0), ("gla", 1), ("attn", 0), ("attn", 1)}
    assert all(set(c.acc) == {2, 4} and 0.0 <= min(c.acc.values()) and c.best_lr in (1e-3, 3e-3)
               for c in first.values())
    import hyla.proxy_train.probe.runner as runner

    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(runner, "run_probes", no_training)
    assert measure_curves(*args, log=lambda _: None) == first
    with pytest.raises(AssertionError, match="trained again"):  # a new budget is a new measurement
        measure_curves(*args[:6], 2, *args[7:], log=lambda _: None)


def test_family_runner_on_cpu(tmp_path) -> None:
    got = []
    ctx = FamilyContext(scale="tiny", level_set="retrofit-tiny", cache_root=str(tmp_path), log=lambda _: None,
                        options={"capacity": {"steps": 2, "batch_size": 2, "lrs": [1e-3], "eval_every": 2,
                                              "eval_examples": 4, "pool_rows": 8}})
    jobs = [FamilyJob(resolve_preset("gla-6:1@tiny"), 0), FamilyJob(resolve_preset("gla-pure@tiny"), 0)]
    capacity.run_capacity_family(jobs, ctx, lambda j, r: got.append((j, r)))
    assert [j.layout.name for j, _ in got] == ["gla-6:1@tiny", "gla-pure@tiny"]
    for _, r in got:
        assert 0.0 <= r.floor <= r.recall <= 1.0 and set(r.levels) == {p.level for p in PROFILES}
        assert r.budget_steps == 2 and any(k.startswith("capacity:attn:") for k in r.shared)


def test_family_lookup_and_suite_score() -> None:
    from hyla.proxy_train.retrofit.family import family_runner

    assert family_runner("capacity") is capacity.run_capacity_family
    with pytest.raises(ConfigError, match="proxy family: 'nope' is not allowed"):
        family_runner("nope")
    # tasks are the level keys' prefixes, hop counts pooled: mean(mqar levels), mean(hop levels), then the mean
    assert suite_score({"mqar@64x4": 1.0, "mqar@64x8": 0.5, "hop1@64x4": 0.2, "hop3@64x4": 0.4}) == \
        pytest.approx((0.75 + 0.3) / 2)


def test_concurrent_measurers_train_once(tmp_path, monkeypatch) -> None:
    """Two callers at once (threads, each with its own file lock handle): one trains, the other waits and reads."""
    import threading
    import time

    import hyla.proxy_train.probe.runner as runner

    calls = []

    def fake_run_probes(jobs, cfg, dev, init_std, log=None, **kw):
        calls.append(len(jobs))
        time.sleep(0.5)  # the other caller arrives while this one holds the lock
        return [{"status": "ok", "lr": j.lr, "seed": j.seed, "score": 0.5, "levels": [0.6, 0.4], "auc": 0.1,
                 "steps": 2, "diverged": False, "curve": [], "cuda_graph": False, "wall_s": 1.0, "stacked": len(jobs)}
                for j in jobs]

    monkeypatch.setattr(runner, "run_probes", fake_run_probes)
    scale = Scale("cap-lock", 2, 16, 1, 32, 64)
    recipe = CapacityRecipe(steps=2, lrs=(1e-3,))
    out = [None, None]

    def call(i: int) -> None:
        out[i] = measure_curves(["gla"], scale, [2, 4], 16, recipe, [0], 1, "cpu", str(tmp_path), log=lambda _: None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and out[0] == out[1] and out[0][("gla", 0)].acc == {2: 0.6, 4: 0.4}
