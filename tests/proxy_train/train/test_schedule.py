"""The one LR schedule (`hyla.proxy_train.train.schedule`) gives every call site exactly what it gave before (issue 17).

Until issue 17 the schedule was written three times: ``lr_at`` (proxy LM runs), ``lr_lambda`` (full runs, under
torch's ``LambdaLR``) and ``wsd_lr`` (recall probes). The values below were computed by those three old functions
before they became calls of the one `wsd_lr`; ``_old_*`` are their bodies verbatim. Equality is exact (``==``):
a refactor of the schedule must not move a single float.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from hyla.proxy_train.probe.config import RecallProbeConfig
from hyla.proxy_train.proxy.config import ProxyConfig, lr_at
from hyla.proxy_train.train import schedule as lr_schedule
from hyla.proxy_train.train.full_loop import lr_lambda

STEPS = [0, 1, 4, 9, 10, 11, 50, 81, 82, 83, 90, 99, 100, 150]


def _old_wsd_lr(step: int, total: int, lr: float, warmup: int, decay_fraction: float, min_ratio: float) -> float:
    """The probe's wsd_lr before issue 17 (also the body of the proxy's lr_at)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    decay_steps = max(1, round(span * decay_fraction))
    progress = (step - warmup - (span - decay_steps)) / decay_steps
    if progress <= 0:
        return lr
    floor = lr * min_ratio
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _old_lr_lambda(spec: SimpleNamespace):
    """The full runs' lr_lambda before issue 17."""
    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        span = max(1, spec.total_steps - spec.warmup_steps)
        progress = min(1.0, (step - spec.warmup_steps) / span)
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def _proxy(**kw) -> ProxyConfig:
    return ProxyConfig.from_dict({"preset": "tiny", "steps": 100, "warmup": 10, "lr": 2e-3, "min_lr_ratio": 0.05, **kw})


def test_probe_schedule_pinned() -> None:
    """Recall probes: `probe.stack.StepTables` calls ``wsd_lr(step, total, lr, warmup, decay_fraction,
    min_lr_ratio)``, whose floor was a hard-coded 0.1 before it became the probe config's field (default 0.1)."""
    assert RecallProbeConfig().min_lr_ratio == 0.1
    assert [lr_schedule.wsd_lr(s, 100, 3e-3, 10, 0.2, 0.1) for s in STEPS] == [
        0.00030000000000000003, 0.0006000000000000001, 0.0015, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003,
        0.002979490466566481, 0.0018844250398503564, 0.0003205095334335192, 0.00030000000000000003,
        0.00030000000000000003]
    assert [lr_schedule.wsd_lr(s, 300, 1e-3, 50, 0.3, 0.1) for s in (0, 49, 50, 100, 259, 260, 261, 299, 300)] == [
        2e-05, 0.001, 0.001, 0.001, 0.0006157373628530854, 0.0005970378084704442, 0.0005782557337881911,
        0.00010039472645551373, 0.0001]


def test_proxy_lm_schedule_pinned() -> None:
    """Proxy LM runs: ``lr_at(step, cfg)``, cosine over all post-warm-up steps and warmup-stable-decay."""
    assert [lr_at(s, _proxy(decay_fraction=1.0)) for s in STEPS] == [
        0.0002, 0.0004, 0.001, 0.002, 0.002, 0.001999421285668141, 0.001214965768783584, 0.0003013897840736142,
        0.0002814338553438, 0.00026241430607271046, 0.0001572920102533871, 0.00010057871433185903, 0.0001, 0.0001]
    assert [lr_at(s, _proxy(decay_fraction=0.25)) for s in STEPS] == [
        0.0002, 0.0004, 0.001, 0.002, 0.002, 0.002, 0.002, 0.0019141503955867926, 0.0018491908561896221,
        0.0017679620956365454, 0.0009148009036403792, 0.00010966963021311395, 0.0001, 0.0001]


def test_fullscale_lambda_pinned() -> None:
    """Full runs: ``lr_lambda(spec)`` (a multiplier of the optimizer's lr) reads four fields of the RunSpec; with
    the default ``decay_fraction`` 1.0 its values are the ones full runs had before WSD was offered."""
    f = lr_lambda(SimpleNamespace(total_steps=100, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=1.0))
    assert [f(s) for s in STEPS] == [
        0.1, 0.2, 0.5, 1.0, 1.0, 0.9997258721585931, 0.6281416799501187, 0.19539516087697517, 0.18594235253127372,
        0.17693309235023127, 0.12713832064634126, 0.10027412784140691, 0.1, 0.1]
    f = lr_lambda(SimpleNamespace(total_steps=100, warmup_steps=7, min_lr_ratio=0.37, decay_fraction=1.0))
    assert [f(s) for s in STEPS] == [
        0.14285714285714285, 0.2857142857142857, 0.7142857142857143, 0.9992813636242223, 0.9983838368684469,
        0.9971287334698453, 0.7221563659025165, 0.43268465524214395, 0.42645951601970805, 0.4205293761795637,
        0.3878024837063562, 0.3701797103571388, 0.37, 0.37]


@pytest.mark.parametrize("total,warmup", [(1, 0), (5, 5), (7, 3), (40, 0), (64, 8), (250, 25), (1000, 100)])
@pytest.mark.parametrize("min_ratio", [0.0, 0.05, 0.1, 0.123456789, 0.37, 0.9, 1.0])
def test_every_call_site_equals_its_old_formula(total: int, warmup: int, min_ratio: float) -> None:
    """Exact equality with the old bodies on every step (and past the end), for many totals and floors."""
    steps = range(total + 3)
    full = lr_lambda(SimpleNamespace(total_steps=total, warmup_steps=warmup, min_lr_ratio=min_ratio,
                                     decay_fraction=1.0))
    old_full = _old_lr_lambda(SimpleNamespace(total_steps=total, warmup_steps=warmup, min_lr_ratio=min_ratio))
    assert [full(s) for s in steps] == [old_full(s) for s in steps]
    for lr in (1.0, 3e-3, 7e-4):
        for fraction in (0.05, 0.2, 0.5, 1.0):
            assert [lr_schedule.wsd_lr(s, total, lr, warmup, fraction, min_ratio) for s in steps] == [
                _old_wsd_lr(s, total, lr, warmup, fraction, min_ratio) for s in steps]
    if warmup > 0:  # ProxyConfig wants total >= 1 steps; lr_at is wsd_lr on the config's fields
        cfg = _proxy(steps=total, warmup=warmup, lr=3e-3, min_lr_ratio=min_ratio, decay_fraction=0.2)
        assert [lr_at(s, cfg) for s in steps] == [_old_wsd_lr(s, total, 3e-3, warmup, 0.2, min_ratio) for s in steps]


def test_decay_fraction_one_is_plain_cosine() -> None:
    """The full-run shape is the WSD shape with nothing stable: warm-up, then a cosine over every later step."""
    for s in range(12):
        assert lr_schedule.wsd_lr(s, 10, 1.0, 3, 1.0, 0.1) == _old_lr_lambda(
            SimpleNamespace(total_steps=10, warmup_steps=3, min_lr_ratio=0.1))(s)


@pytest.mark.parametrize(("field", "value", "proxy_name", "full_name"), [
    ("lr", 0.0, "lr", "lr"), ("warmup", -1, "warmup", "warmup_steps"),
    ("min_lr_ratio", 1.5, "min_lr_ratio", "min_lr_ratio"),
    ("weight_decay", -0.1, "weight_decay", "weight_decay"), ("grad_clip", -1.0, "grad_clip", "grad_clip"),
    ("betas", (0.9, 1.0), "betas", "betas"), ("decay_fraction", 0.0, "decay_fraction", "decay_fraction"),
])
def test_proxies_and_full_runs_refuse_the_same_optimizer_settings(field: str, value: object, proxy_name: str,
                                                                 full_name: str) -> None:
    """One check (`TrainConfig.check_training`) for both configs: one line naming the field as each spells it."""
    from hyla.config import ConfigError
    from hyla.proxy_train.train.full_spec import RunSpec
    from hyla.proxy_train.proxy.config import ProxyConfig

    with pytest.raises(ConfigError, match=rf"^proxy config\.{proxy_name}: .* must "):
        ProxyConfig.from_dict({"preset": "tiny", proxy_name: value})
    with pytest.raises(ConfigError, match=rf"^{full_name}: .* must "):
        RunSpec.from_dict({"layout": "gla-6:1", full_name: value})


def test_full_runs_and_proxies_share_one_config_and_schedule() -> None:
    """`RunSpec` and `ProxyConfig` are one `TrainConfig` hierarchy: a full run takes the proxies' warmup-stable-decay
    schedule through the same ``decay_fraction`` field, and the same values come out of both loops' schedules."""
    from hyla.proxy_train.train.full_spec import RunSpec
    from hyla.proxy_train.train.config import TrainConfig

    spec = RunSpec.from_dict({"layout": "gla-6:1", "tokens": 100 * 524_288, "warmup_steps": 10, "lr": 3e-3,
                              "decay_fraction": 0.2, "min_lr_ratio": 0.1})
    proxy = _proxy(steps=100, warmup=10, lr=3e-3, decay_fraction=0.2, min_lr_ratio=0.1)
    assert isinstance(spec, TrainConfig) and isinstance(proxy, TrainConfig)
    full = lr_lambda(spec)
    assert [3e-3 * full(s) for s in range(100)] == pytest.approx([lr_at(s, proxy) for s in range(100)], rel=1e-12)
    assert full(50) == 1.0 and full(85) < 1.0  # stable until the last 20 % of the post-warm-up steps
