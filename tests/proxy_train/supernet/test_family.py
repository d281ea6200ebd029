"""``recall: {family: supernet}``: a proxy scored by inheritance, one layout or many per call, seeds as supernets."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyla.config import ConfigError
from hyla.proxy_train.proxy.config import ProxyConfig
from hyla.proxy_train.proxy.run import run_proxies, run_proxy
from hyla.space.presets import resolve_preset

#: every stage as short as it can be: this checks the plumbing, not the scores' quality
RETROFIT = {"teacher": {"recall_steps": 12, "mix_steps": 6, "batch_size": 8, "solved_at": 0.0, "retries": 0,
                        "eval_examples": 16},
            "transfer": {"steps": 6, "batch_size": 4}, "pool_rows": 64, "eval_examples": 16, "eval_text_rows": 4,
            "text": {"max_docs": 40}, "device": "cpu"}
SPACE = {"scale": "tiny", "n_layers": 4, "mixers": ["gla", "gdn"], "n_attention": [0, 1, 2, 4],
         "placements": ["uniform_last"]}


def supernet_proxy(cache: Path, **over: object) -> ProxyConfig:
    """A proxy config of the supernet family over `SPACE` (tiny recipe, cache under ``cache``)."""
    recall = {"family": "supernet", "retrofit": {**RETROFIT, "cache_dir": str(cache)},
              "train": {"steps": 4, "batch_size": 4, "layouts_per_step": 2},
              "score": {"eval_examples": 8, "eval_text_rows": 4}, "space": SPACE, "batch": 4}
    return ProxyConfig.from_dict({"scale": "tiny", "steps": 1, "train_lm": False, "device": "cpu",
                                  "recall": recall, **over})


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("supernet-cache")


def test_one_layout_scored_by_inheritance(cache: Path) -> None:
    cfg = supernet_proxy(cache)
    assert cfg.scores == {"recall", "lm_val_loss", "kl_to_teacher"}
    lay = resolve_preset("gla-pure@tiny").with_layers(["gla", "gla", "gla", "attn"], name="gla-at3")
    r = run_proxy(lay, cfg, progress=False)
    assert r.status == "ok", r.fail_reason
    assert r.proxy_family == "supernet" and 0.0 <= r.recall <= 1.0 and r.kl_to_teacher > 0
    assert r.recall_tasks and r.lm_val_loss > 0
    (extra,) = r.family_extra
    assert extra["seed"] == 0 and len(extra["key"]) == 16 and extra["teacher"]
    teacher = run_proxy(lay.with_layers(["attn"] * 4), cfg, progress=False)
    assert teacher.kl_to_teacher == pytest.approx(0.0, abs=1e-6)


def test_many_layouts_in_one_call_equal_one_by_one(cache: Path) -> None:
    cfg = supernet_proxy(cache)
    base = resolve_preset("gla-pure@tiny")
    layouts = [base.with_layers(l, name=str(i)) for i, l in enumerate(
        (["gla"] * 4, ["gdn", "gdn", "gdn", "attn"], ["gla", "attn", "gla", "attn"], ["attn"] * 4))]
    many = run_proxies(layouts, cfg)
    for lay, r in zip(layouts, many):
        one = run_proxy(lay, cfg, progress=False)
        assert r.status == "ok" and (r.recall, r.kl_to_teacher, r.lm_val_loss) == (one.recall, one.kl_to_teacher,
                                                                                   one.lm_val_loss)
        assert r.layout_key == lay.key() and r.kv_bytes == one.kv_bytes


def test_seeds_are_supernets_and_give_a_spread(cache: Path) -> None:
    cfg = supernet_proxy(cache, seeds=2)
    lay = resolve_preset("gdn-pure@tiny").with_layers(["gdn"] * 4)
    r = run_proxy(lay, cfg, progress=False)
    assert r.status == "ok" and r.seeds == [0, 1]
    assert len({e["key"] for e in r.family_extra}) == 2
    assert len(r.seed_values["kl_to_teacher"]) == 2 and r.sem["kl_to_teacher"] is not None


def test_layouts_outside_the_space_and_lm_runs_are_handled(cache: Path) -> None:
    cfg = supernet_proxy(cache)
    with pytest.raises(ConfigError, match="not in space"):
        run_proxy(resolve_preset("hgrn-pure@tiny").with_layers(["hgrn"] * 4), cfg, progress=False)
    with pytest.raises(ConfigError, match="train_lm: false"):
        run_proxies([resolve_preset("gla-pure@tiny").with_layers(["gla"] * 4)], supernet_proxy(cache, train_lm=True))
