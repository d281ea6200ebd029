"""Export one trial of a study: layout YAML, HF config, fla-native config (when expressible), full-run spec.

``export_trial(data, trial, out_dir)`` writes into ``out_dir``:

- ``layout.yaml``: the `Layout` (``hyla space show layout.yaml`` / ``Layout.load``).
- ``hf_config/``: ``HylaConfig(layout=...)`` saved with ``save_pretrained``; ``AutoModelForCausalLM.from_config``
  builds it once ``hyla.proxy_train.hf`` is imported.
- ``fla_config.json`` when the layout is one flash-linear-attention model: a single linear mixer kind with the same
  options in every layer, whole-layer full (unwindowed) attention, no head-wise layers, and a kind whose fla model
  has hyla's block structure (norm -> mixer -> norm -> SwiGLU). Otherwise ``fla_config_unsupported.txt`` says why.
  A pure Transformer maps to fla's ``transformer`` model.
- ``full_run.yaml``: the full-scale run spec (``hyla.proxy_train.fullscale.run_spec_for``) when that module is
  installed.
- ``trial.json``: study, trial number, rung, objective values and the recorded ProxyResult (for provenance).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.analysis.study_data import StudyData, TrialRecord
from hyla.space.layout import Layout

#: hyla mixer kind -> (fla model_type, {hyla option: fla config field}, {option: value fla's model always uses}).
#: Options in the third map are not config fields of fla's model: the model builds its layer with that value.
FLA_MODELS: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
    "gla": ("gla", {"num_heads": "num_heads", "expand_k": "expand_k", "expand_v": "expand_v",
                    "use_short_conv": "use_short_conv", "conv_size": "conv_size"}, {"gate_low_rank_dim": 16}),
    "hgrn": ("hgrn", {"expand_ratio": "expand_ratio", "use_short_conv": "use_short_conv",
                      "conv_size": "conv_size"}, {}),
    "hgrn2": ("hgrn2", {"expand_ratio": "expand_ratio", "use_short_conv": "use_short_conv",
                        "conv_size": "conv_size"}, {}),
    "retnet": ("retnet", {"num_heads": "num_heads", "expand_k": "expand_k", "expand_v": "expand_v"}, {}),
    "deltanet": ("delta_net", {"num_heads": "num_heads", "expand_k": "expand_k", "expand_v": "expand_v",
                               "use_beta": "use_beta", "use_short_conv": "use_short_conv",
                               "conv_size": "conv_size"}, {}),
    "gdn": ("gated_deltanet", {"num_heads": "num_heads", "head_dim": "head_dim", "expand_v": "expand_v",
                               "use_short_conv": "use_short_conv", "conv_size": "conv_size"}, {}),
}
_NO_FLA = {"mamba2": "fla's mamba2 model has no MLP in its blocks and no attention layers, so a hyla block "
                     "(mixer + SwiGLU) cannot be expressed in it"}


@dataclass
class ExportResult:
    """What `export_trial` wrote, and notes on anything it skipped."""

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def fla_config(layout: Layout) -> tuple[dict[str, Any] | None, str | None]:
    """The fla-native config dict of ``layout`` and None, or None and the reason it cannot be expressed."""
    why = []
    if any(s.attn_heads for s in layout.layers):
        why.append("head-wise layers (softmax heads inside a linear layer) have no fla model: "
                   + ", ".join(str(i) for i, s in enumerate(layout.layers) if s.attn_heads))
    if any(s.window is not None for s in layout.layers):
        why.append("sliding-window attention layers are not exported (hyla's window semantics are not checked "
                   "against fla's window_size): " + ", ".join(str(i) for i, s in enumerate(layout.layers) if s.window))
    kinds = layout.linear_mixers
    if len(kinds) > 1:
        why.append(f"mixed linear mixers ({', '.join(kinds)}); an fla model has one linear mixer kind")
    for k in kinds:
        if k in _NO_FLA:
            why.append(_NO_FLA[k])
    if kinds and not why:
        opts = [layout.mixer_options(i) for i, s in enumerate(layout.layers) if s.mixer == kinds[0]]
        if any(o != opts[0] for o in opts):
            why.append(f"the {kinds[0]} layers use different options; an fla config has one set for all layers")
        else:
            for name, fixed in FLA_MODELS[kinds[0]][2].items():
                if opts[0].get(name) != fixed:
                    why.append(f"{kinds[0]} option {name}={opts[0].get(name)} is not a field of fla's config "
                               f"(its model always uses {fixed})")
    if why:
        return None, "; ".join(why)
    common: dict[str, Any] = {"hidden_size": layout.d_model, "num_hidden_layers": layout.n_layers,
                              "intermediate_size": layout.mlp_hidden, "vocab_size": layout.vocab_size,
                              "hidden_act": "swish", "norm_eps": layout.norm_eps, "tie_word_embeddings": False}
    if not kinds:  # pure Transformer
        return {"model_type": "transformer", **common, "num_heads": layout.num_heads,
                "num_kv_heads": layout.kv_heads, "window_size": None, "rope_theta": layout.rope_theta}, None
    model_type, fields, _ = FLA_MODELS[kinds[0]]
    opts = layout.mixer_options(next(i for i, s in enumerate(layout.layers) if s.mixer == kinds[0]))
    cfg = {"model_type": model_type, **common, **{fields[k]: v for k, v in opts.items() if k in fields}}
    if kinds[0] in ("hgrn", "hgrn2"):
        # fla's HGRN models add learned per-layer lower bounds; hyla's blocks have none (same math without them)
        cfg["use_lower_bound"] = False
    if layout.attention_layers:
        cfg["attn"] = {"layers": list(layout.attention_layers), "num_heads": layout.num_heads,
                       "num_kv_heads": layout.kv_heads, "window_size": None, "rope_theta": layout.rope_theta,
                       "qkv_bias": False}
    return cfg, None


def _check_fla(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate with fla's own config class (registered with AutoConfig by ``import fla``)."""
    import fla  # noqa: F401  (registers fla's model types)
    from transformers import AutoConfig

    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    try:
        parsed = AutoConfig.for_model(cfg["model_type"], **kw)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"fla config ({cfg['model_type']}): fla refused it: {str(e).splitlines()[0]}") from None
    return parsed.to_dict()


def find_trial(data: StudyData, number: int, rung: int | None = None) -> TrialRecord:
    """Trial ``number`` of ``rung`` (default: the highest rung holding that number)."""
    hits = [t for t in data.trials if t.number == number and (rung is None or t.rung == rung)]
    if not hits:
        raise ConfigError(f"--trial: {number} is not a trial of study {data.name!r}"
                          + (f" at rung {rung}" if rung is not None else ""))
    return max(hits, key=lambda t: t.rung)


def export_trial(data: StudyData, trial: TrialRecord, out_dir: str | Path, scale: str = "340m",
                 overwrite: bool = False) -> ExportResult:
    """Write the export files of ``trial`` into ``out_dir`` (see the module docstring).

    Args:
        data: the study the trial belongs to.
        trial: the trial (usually from `find_trial` or `hyla.analysis.pareto.pick`).
        out_dir: target directory; refused if it already holds a ``layout.yaml`` unless ``overwrite``.
        scale: full-scale preset for ``full_run.yaml`` (``340m`` or ``1.3b``).
        overwrite: replace an earlier export.
    """
    if trial.layout is None:
        raise ConfigError(f"--trial: trial {trial.number} (rung {trial.rung}) has no valid layout user attr")
    out = Path(out_dir)
    if (out / "layout.yaml").exists() and not overwrite:
        raise ConfigError(f"--out: {out} already holds an export (layout.yaml); pass --overwrite or another dir")
    out.mkdir(parents=True, exist_ok=True)
    res = ExportResult(out)
    layout = trial.layout
    layout.dump(out / "layout.yaml")
    res.files.append(out / "layout.yaml")

    from hyla.proxy_train.hf import HylaConfig  # torch/transformers: imported only when exporting

    HylaConfig(layout=layout.to_dict()).save_pretrained(str(out / "hf_config"))
    res.files.append(out / "hf_config")

    for stale in ("fla_config.json", "fla_config_unsupported.txt"):
        (out / stale).unlink(missing_ok=True)
    cfg, why = fla_config(layout)
    if cfg is not None:
        full = _check_fla(cfg)
        (out / "fla_config.json").write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        res.files.append(out / "fla_config.json")
    else:
        (out / "fla_config_unsupported.txt").write_text(
            f"No fla-native config for layout {layout.layer_string()}: {why}.\n"
            "Use hf_config/ (model_type 'hyla', loads after `import hyla.proxy_train.hf`) instead.\n")
        res.files.append(out / "fla_config_unsupported.txt")

    try:
        from hyla.proxy_train.fullscale import run_spec_for
    except ImportError as e:
        res.notes.append(f"full_run.yaml not written: hyla.proxy_train.fullscale unavailable ({e})")
    else:
        run_spec_for(layout, scale).dump(out / "full_run.yaml")
        res.files.append(out / "full_run.yaml")

    info = {"study": data.name, "source": data.source, "trial": trial.number, "rung": trial.rung,
            "layout_key": trial.layout_key, "layout_string": trial.layout_string, "preset": trial.preset,
            "values": trial.values, "feasible": trial.feasible, "result": trial.result}
    (out / "trial.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    res.files.append(out / "trial.json")
    return res
