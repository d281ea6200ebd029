"""Full-run specs hold the model they train: promotion carries the winner's pattern to 340M / 1.3B, a spec whose
layout is not its scale's shape is refused, and ``hyla train SPEC --dry-run`` prints what ``hyla space show`` does."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml

from hyla.cli import main
from hyla.config import ConfigError
from hyla.proxy_train.train.full_spec import RunSpec, run_spec_for
from hyla.space.layout import Layout
from hyla.space.presets import at_scale, get_scale, resolve_preset
from conftest import REPO

MINI = {"layers": ["gdn+a1", "gdn", "gdn", "attn"], "d_model": 64, "vocab_size": 512, "mlp_hidden": 128,
        "num_heads": 2, "name": "winner"}


def _json_out(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("preset", ["gdn-6:1@340m", "gla-3:1@1.3b", "transformer@340m", "hgrn2-pure@1.3b"])
def test_dry_run_matches_space_show(preset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scale = preset.split("@")[1]
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"layout": preset, "scale": scale, "seq_len": 4096}))
    dry = _json_out(capsys, ["train", str(path), "--dry-run", "--json"])
    show = _json_out(capsys, ["space", "show", preset, "--context", "4096", "--json"])
    run = dry.pop("run")
    assert dry == show  # params, per-layer sizes, KV/state bytes at seq_len, FLOPs per token: all identical
    assert run["seq_len"] == 4096 and run["tokens"] == (20e9 if scale == "340m" else 100e9)
    assert main(["train", str(path), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"{show['params']['total']:,}" in text and f"{show['memory']['4096']['total_bytes']:,} B" in text
    assert "nothing trained" in text and show["layers_string"][:6] in text and "(layer letters: " in text
    assert not (tmp_path / "runs").exists() and not Path("runs/full").joinpath(show["key"]).exists()


def test_run_spec_for_carries_a_proxy_layout_to_the_scale() -> None:
    mini = Layout.from_dict(MINI)
    for scale, width in (("340m", 1024), ("1.3b", 2048)):
        spec = run_spec_for(mini, scale)
        lay = spec.resolve_layout()
        assert isinstance(spec.layout, dict) and Layout.from_dict(spec.layout).key() == lay.key()  # the YAML is it
        assert (lay.n_layers, lay.d_model, lay.vocab_size) == (24, width, 32000)
        assert lay.layer_string() == "nNNA" * 6 and lay.layers[0].attn_heads == get_scale(scale).num_heads // 2
    assert run_spec_for("gla-6:1", "340m").layout == "gla-6:1"  # a preset at the scale stays a name
    assert run_spec_for("gla-6:1@tiny", "1.3b").resolve_layout().key() == resolve_preset("gla-6:1@1.3b").key()
    assert run_spec_for(mini, "custom", tokens=2**20).resolve_layout().d_model == 64  # custom: as given


def test_a_spec_that_says_340m_must_hold_340m(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^layout: not the shape of scale 340m \(n_layers 4 != 24, d_model 64 != "
                                          r"1024, .*vocab_size 512 != 32000\); carry the layout .* scale: custom"):
        RunSpec.from_dict({"layout": MINI, "scale": "340m"}).resolve_layout()
    with pytest.raises(ConfigError, match=r"d_model 32 != 2048"):
        RunSpec.from_dict({"layout": "gla-6:1@tiny", "scale": "1.3b"}).resolve_layout()
    path = tmp_path / "stale.yaml"
    path.write_text(yaml.safe_dump({"layout": MINI, "scale": "340m"}))
    assert main(["train", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hyla: error: {path}: layout: not the shape of scale 340m") and err.count("\n") == 1
    assert main(["train", str(path), "--json"]) == 2
    assert "--json: only with --dry-run" in capsys.readouterr().err


def _study_with_winner(layouts: list[Layout]) -> optuna.Study:
    """A finished last rung: the first layout dominates the others (quickstart objectives, values made up)."""
    study = optuna.create_study(directions=["minimize", "maximize", "minimize"])
    for i, lay in enumerate(layouts):
        study.add_trial(optuna.trial.create_trial(
            values=[5.0 + i, 1.0 - 0.1 * i, 1000.0 + i],
            user_attrs={"layout": lay.to_dict(), "objective_sem": [0.0, 0.0, 0.0], "n_seeds": 1}))
    return study


def test_promotion_writes_specs_of_the_full_scale_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hyla.search.config import load_study_config
    from hyla.search.prepare import Prepared, full_runs
    from hyla.space.search_space import SearchSpace, suggest_layout

    cfg = load_study_config(REPO / "examples" / "quickstart.yaml", run_dir=str(tmp_path / "run"))
    assert cfg.full_runs.scales == ["340m", "1.3b"] and not cfg.full_runs.enabled
    space = SearchSpace.from_dict(cfg.space)
    winner = suggest_layout(optuna.trial.FixedTrial({"n_attention": 1, "placement": "middle", "attn_heads": 1}),
                            space)  # NNAN at mini scale, one softmax head of two in each GDN layer
    loser = suggest_layout(optuna.trial.FixedTrial({"n_attention": 0, "placement": "uniform_last", "attn_heads": 0}), space)
    (tmp_path / "run" / "full_runs").mkdir(parents=True)
    stale = tmp_path / "run" / "full_runs" / "rung1-trial00000-340m.yaml"  # what an older hyla wrote: refused now
    RunSpec(layout=winner.to_dict(), scale="340m").dump(stale)
    prep = Prepared(cfg=cfg, space=space, storage=None, proxies=[], proxy_paths=[])
    paths = full_runs(prep, _study_with_winner([winner, loser]))
    assert [Path(p).name for p in paths] == ["rung1-trial00000-340m.yaml", "rung1-trial00000-1.3b.yaml"]
    for path, (scale, width) in zip(paths, (("340m", 1024), ("1.3b", 2048))):
        spec = RunSpec.load(path)
        lay = spec.resolve_layout()
        assert spec.scale == scale and (lay.n_layers, lay.d_model, lay.vocab_size) == (24, width, 32000)
        assert lay.layer_string() == winner.layer_string() * 6 == "nnAn" * 6
        assert lay.attention_layers == (2, 6, 10, 14, 18, 22) and lay.name.endswith(f"at {scale}")
        assert all(s.attn_heads == lay.num_heads // 2 for s in lay.layers if not s.is_attention)
        assert lay.key() == at_scale(winner, scale).key()
        out = _json_out(capsys, ["train", path, "--dry-run", "--json"])
        assert out["key"] == lay.key() and out["layout"]["d_model"] == width


def test_promotion_skips_or_refuses_a_depth_that_cannot_be_carried(tmp_path: Path) -> None:
    from hyla.search.config import study_config_from_dict
    from hyla.search.prepare import Prepared, full_runs, full_scale_problem, prepare
    from hyla.space.search_space import SearchSpace, suggest_layout

    data = {"name": "odd", "run_dir": str(tmp_path / "run"), "objectives": ["lm_loss", "recall", "memory_bytes"],
            "space": {"scale": "tiny", "n_layers": 5, "mixers": ["gla"], "n_attention": [1]},
            "rungs": [{"proxy": "tiny"}], "full_runs": {"scales": ["340m"]}}
    cfg = study_config_from_dict(data, where="odd.yaml")
    space = SearchSpace.from_dict(data["space"])
    assert "depth 5" in full_scale_problem(space, "340m")
    prep = Prepared(cfg=cfg, space=space, storage=None, proxies=[], proxy_paths=[])
    assert full_runs(prep, _study_with_winner([suggest_layout(optuna.trial.FixedTrial({}), space)])) == []
    enabled = study_config_from_dict({**data, "full_runs": {"scales": ["340m"], "enabled": True}}, where="odd.yaml")
    with pytest.raises(ConfigError, match=r"^odd.yaml: full_runs.scales: 340m: n_layers: depth 5 .* does not "
                                          "divide depth 24"):
        prepare(enabled)
    assert not (tmp_path / "run").exists()  # refused before anything was written
