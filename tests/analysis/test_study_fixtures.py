"""The study builders of tests/study_fixtures.py write what the search stores and what analysis reads."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from study_fixtures import build_noise_study, build_study


def test_build_study_writes_both_rung_modes(tmp_path: Path) -> None:
    for mode in ("studies", "attr"):
        p = build_study(tmp_path / mode, rung_mode=mode)
        names = optuna.get_all_study_names(optuna.storages.JournalStorage(JournalFileBackend(str(p))))
        assert names == (["toy/rung0", "toy/rung1"] if mode == "studies" else ["toy"])


def test_build_noise_study_records_the_spread(tmp_path: Path) -> None:
    from hyla.analysis.study_data import load_study

    data = load_study(build_noise_study(tmp_path))
    first, old = data.select(rung=0)[0], data.select(rung=0)[5]
    assert first.n_seeds == 3 and first.seed_values("recall") == [0.20, 0.22, 0.21]
    assert first.sem("recall") == pytest.approx(0.01 / 3 ** 0.5)
    assert first.sem("lm_loss") == pytest.approx(first.result["sem"]["lm_val_loss"])  # lm_loss -> lm_val_loss
    assert first.seed_values("lm_loss") == [3.10, 3.12, 3.11]
    assert first.sem("memory_bytes") == 0.0 and first.sem("params") == 0.0
    # a trial written before seeds existed still loads: unknown spread, one seed
    assert old.n_seeds == 1 and old.sem("recall") is None and old.sem("lm_loss") is None
    assert old.seed_values("recall") == [old.metric("recall")]
