"""Export one trial of a study, or one trained checkpoint: layout, HF model, fla model (when expressible), run spec.

``export_trial(data, trial, out_dir, checkpoint=None)`` / ``export_checkpoint(checkpoint, out_dir)`` write::

    layout.yaml          the `Layout` (``hyla space show layout.yaml`` / ``Layout.load``)
    config.json          HylaConfig (model_type "hyla"): ``import hyla`` then
                         ``AutoModelForCausalLM.from_pretrained(out_dir)`` (with weights) or ``.from_config``
    model.safetensors    hyla-named weights (+ generation_config.json, tokenizer files) when a checkpoint is given
    fla/config.json      fla's own config when the layout is one fla model: a single linear mixer kind with the same
                         options in every layer, whole-layer full (unwindowed) attention, no head-wise layers, and a
                         kind whose fla model has hyla's block structure (norm -> mixer -> norm -> SwiGLU); a pure
                         Transformer maps to fla's ``transformer``. Otherwise ``fla_config_unsupported.txt`` says why.
    fla/model.safetensors  the same weights under fla's names (`hyla.analysis.export_weights`), with a checkpoint
    full_run.yaml        the full-scale run spec: the trial's layout at ``scale`` (``run_spec_for``), or the spec
                         that trained the checkpoint
    trial.json           study, trial number, rung, objective values and the recorded ProxyResult (trial exports)
    checkpoint.json      where the weights came from (path, step, layout key), checkpoint exports
    HOW_TO_LOAD.txt      `loading_instructions`, also printed by ``hyla analysis export``

With a checkpoint, layout.yaml and the model files describe the checkpoint's layout (a full run trains the trial's
pattern at the target scale), and trial.json keeps the trial's own proxy-scale layout.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.analysis.export_weights import (RunWeights, copy_tokenizer, load_run_weights, write_fla_config,
                                          write_fla_model, write_hyla_model)
from hyla.analysis.study_data import StudyData, TrialRecord
from hyla.space.layout import Layout
from hyla.space.mixer_kinds import get_mixer_kind

#: what an earlier export may have left that a new one must not pair with other files
_STALE = ("config.json", "generation_config.json", "model.safetensors", "fla_config_unsupported.txt",
          "full_run.yaml", "trial.json", "checkpoint.json", "HOW_TO_LOAD.txt")


@dataclass
class ExportResult:
    """What an export wrote, and notes on anything it skipped.

    Attributes:
        out_dir: the export directory.
        files: paths written (directories for fla/).
        notes: what was skipped and why.
        layout: the exported model's layout.
        weights: whether trained weights were written (hyla's and, when expressible, fla's).
        fla: whether fla/ was written (fla can express the layout).
    """

    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: Layout | None = None
    weights: bool = False
    fla: bool = False


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
        if get_mixer_kind(k).fla_model.missing:
            why.append(get_mixer_kind(k).fla_model.missing)
    if kinds and not why:
        opts = [layout.mixer_options(i) for i, s in enumerate(layout.layers) if s.mixer == kinds[0]]
        if any(o != opts[0] for o in opts):
            why.append(f"the {kinds[0]} layers use different options; an fla config has one set for all layers")
        else:
            for name, fixed in get_mixer_kind(kinds[0]).fla_model.fixed.items():
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
    fla = get_mixer_kind(kinds[0]).fla_model  # the kind's fla model: its model_type and config fields
    opts = layout.mixer_options(next(i for i, s in enumerate(layout.layers) if s.mixer == kinds[0]))
    cfg = {"model_type": fla.model_type, **common, **{fla.fields[k]: v for k, v in opts.items() if k in fla.fields}}
    if layout.attention_layers:
        cfg["attn"] = {"layers": list(layout.attention_layers), "num_heads": layout.num_heads,
                       "num_kv_heads": layout.kv_heads, "window_size": None, "rope_theta": layout.rope_theta,
                       "qkv_bias": False}
    return cfg, None


def fla_inexact(layout: Layout) -> list[str]:
    """Where fla's model built from `fla_config` computes differently from hyla's (empty: the same math).

    fla's models pass their one ``config.norm_eps`` both to the block norms and to the norm inside each linear layer
    (GLA/RetNet's gated output norm, HGRN's ``g_norm``, the delta rules' ``o_norm``). hyla builds its layers with
    ``layout.norm_eps`` there too (`FlaMixer.from_layout`), so only a layer whose options set another ``norm_eps``
    differs.
    """
    notes = []
    for i, spec in enumerate(layout.layers):
        eps = spec.option_dict().get("norm_eps")
        if spec.mixer != "attn" and eps is not None and eps != layout.norm_eps:
            notes.append(f"layers[{i}] ({spec.mixer}) sets norm_eps {eps:g} inside the layer, where fla's config has "
                         f"one norm_eps ({layout.norm_eps:g}) for block and layer norms: fla's logits differ slightly")
    return notes


def _check_fla(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate with fla's own config class (registered with AutoConfig by ``import fla``)."""
    from transformers import AutoConfig

    from hyla.proxy_train.model.mixers.registry import quiet_fla

    with quiet_fla():
        import fla  # noqa: F401  (registers fla's model types)
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



def _prepare_out(out_dir: str | Path, overwrite: bool) -> Path:
    """Create ``out_dir``; refuse an earlier export unless ``overwrite``, then clear what that one wrote."""
    out = Path(out_dir)
    if (out / "layout.yaml").exists() and not overwrite:
        raise ConfigError(f"--out: {out} already holds an export (layout.yaml); pass --overwrite or another dir")
    out.mkdir(parents=True, exist_ok=True)
    old = out / "checkpoint.json"
    tokenizer_files = json.loads(old.read_text()).get("tokenizer_files", []) if old.is_file() else []
    for name in (*_STALE, *tokenizer_files):
        (out / name).unlink(missing_ok=True)
    for stale_dir in ("fla", "hf_config"):  # hf_config/: the config-only directory of earlier hyla versions
        shutil.rmtree(out / stale_dir, ignore_errors=True)
    (out / "fla_config.json").unlink(missing_ok=True)
    return out


def _write_model(layout: Layout, res: ExportResult, weights: RunWeights | None) -> None:
    """config.json (+ weights) of hyla's model, and fla/ or the reason fla cannot express ``layout``."""
    out = res.out_dir
    layout.dump(out / "layout.yaml")
    res.files.append(out / "layout.yaml")
    res.layout, res.weights = layout, weights is not None
    if weights is None:
        from hyla.proxy_train.model.hf_config import HylaConfig  # transformers: imported only when exporting

        HylaConfig(layout=layout.to_dict()).save_pretrained(str(out))
        res.files.append(out / "config.json")
    else:
        write_hyla_model(weights, out)
        res.files += [out / "config.json", out / "model.safetensors"]
    cfg, why = fla_config(layout)
    if cfg is not None:
        full = _check_fla(cfg)
        inexact = fla_inexact(layout)
        res.notes += inexact
        if weights is None:
            write_fla_config(full, out / "fla", inexact)
        else:
            write_fla_model(weights, full, out / "fla", inexact)
        res.fla = True
        res.files.append(out / "fla")
    else:
        (out / "fla_config_unsupported.txt").write_text(
            f"No fla-native config for layout {layout.layer_string()}: {why}.\n"
            "Use hyla's model in this directory instead (model_type 'hyla'): see HOW_TO_LOAD.txt.\n")
        res.files.append(out / "fla_config_unsupported.txt")


def _finish(res: ExportResult, weights: RunWeights | None) -> ExportResult:
    out = res.out_dir
    if weights is not None:
        tokenizer_files = copy_tokenizer(weights, [out] + ([out / "fla"] if res.fla else []))
        if not tokenizer_files:
            res.notes.append(f"no tokenizer files copied (the run saves them in model/ when it finishes); its "
                             f"tokenizer: {weights.tokenizer or 'unknown'}")
        info = {"source": str(weights.source), "step": weights.step, "layout_key": weights.layout.key(),
                "layout_string": weights.layout.layer_string(), "tokenizer": weights.tokenizer,
                "tokenizer_files": tokenizer_files}
        (out / "checkpoint.json").write_text(json.dumps(info, indent=2) + "\n")
        res.files.append(out / "checkpoint.json")
    notes = [f"note: {n}" for n in res.notes]
    (out / "HOW_TO_LOAD.txt").write_text("\n".join(loading_instructions(res) + notes) + "\n")
    res.files.append(out / "HOW_TO_LOAD.txt")
    return res


def export_trial(data: StudyData, trial: TrialRecord, out_dir: str | Path, scale: str = "340m",
                 overwrite: bool = False, checkpoint: str | Path | None = None,
                 picked: str | None = None) -> ExportResult:
    """Write the export files of ``trial`` into ``out_dir`` (see the module docstring).

    Args:
        data: the study the trial belongs to.
        trial: the trial (usually from `find_trial` or `hyla.analysis.pareto.pick`).
        out_dir: target directory; refused if it already holds a ``layout.yaml`` unless ``overwrite``.
        scale: full-scale preset for ``full_run.yaml`` (``340m`` or ``1.3b``); unused with a checkpoint.
        overwrite: replace an earlier export.
        checkpoint: a `hyla train` run of this trial (run dir, checkpoint dir or saved model dir): its weights are
            exported under hyla's and fla's names, with its layout.
        picked: the `hyla.analysis.pareto.pick` name that chose the trial; ``trial.json`` records it and what it
            means (e.g. the knee of which front).
    """
    if trial.layout is None:
        raise ConfigError(f"--trial: trial {trial.number} (rung {trial.rung}) has no valid layout user attr")
    weights = load_run_weights(checkpoint) if checkpoint is not None else None
    res = ExportResult(_prepare_out(out_dir, overwrite))
    _write_model(weights.layout if weights else trial.layout, res, weights)
    _write_full_run(res, weights, trial.layout, scale)
    info = {"study": data.name, "source": data.source, "trial": trial.number, "rung": trial.rung,
            "layout_key": trial.layout_key, "layout_string": trial.layout_string, "preset": trial.preset,
            "values": trial.values, "feasible": trial.feasible, "result": trial.result}
    if picked is not None:
        from hyla.analysis.pareto import pick_description

        info["pick"] = {"name": picked, "meaning": pick_description(data, picked)}
    if weights is not None and weights.layout.key() != trial.layout_key:
        info["layout"] = trial.layout.to_dict()  # the proxy-scale layout; layout.yaml is the checkpoint's
    (res.out_dir / "trial.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    res.files.append(res.out_dir / "trial.json")
    return _finish(res, weights)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> ExportResult:
    """Export a trained model without a study: ``checkpoint`` as in `export_trial`, files as in the module doc."""
    weights = load_run_weights(checkpoint)
    res = ExportResult(_prepare_out(out_dir, overwrite))
    _write_model(weights.layout, res, weights)
    _write_full_run(res, weights, weights.layout, "340m")
    return _finish(res, weights)


def _write_full_run(res: ExportResult, weights: RunWeights | None, layout: Layout, scale: str) -> None:
    try:
        from hyla.proxy_train.train.full_spec import RunSpec, run_spec_for
    except ImportError as e:
        res.notes.append(f"full_run.yaml not written: hyla.proxy_train.train.full_spec unavailable ({e})")
        return
    spec_path = None
    if weights is not None:
        run_dir = weights.source.parents[2] if weights.step is not None else weights.source.parent
        spec_path = run_dir / "spec.yaml" if (run_dir / "spec.yaml").is_file() else None
    spec = RunSpec.load(spec_path) if spec_path else run_spec_for(layout, scale)
    spec.dump(res.out_dir / "full_run.yaml")
    res.files.append(res.out_dir / "full_run.yaml")


def loading_instructions(res: ExportResult) -> list[str]:
    """How to load what ``res`` wrote (the lines ``hyla analysis export`` prints and HOW_TO_LOAD.txt holds)."""
    out = str(res.out_dir.resolve())
    has_attn = res.layout is not None and any(s.mixer == "attn" for s in res.layout.layers)
    lines = ["hyla's own model (every layout; CPU or CUDA; no flash-attn needed):",
             "    import hyla  # registers model_type 'hyla' with transformers' Auto classes",
             "    from transformers import AutoConfig, AutoModelForCausalLM"]
    if res.weights:
        lines.append(f"    model = AutoModelForCausalLM.from_pretrained({out!r})")
    else:
        lines.append(f"    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained({out!r}))"
                     "  # untrained: no checkpoint was exported (--checkpoint RUN_DIR adds the weights)")
    if res.fla:
        load = "from_pretrained" if res.weights else "from_config"
        arg = f"{out + '/fla'!r}" if res.weights else f"AutoConfig.from_pretrained({out + '/fla'!r})"
        lines += ["fla's model class (needs CUDA: fla's Triton kernels"
                  + (", and flash-attn for the attention layers" if has_attn else "") + "):",
                  "    import fla  # registers fla's model types",
                  f"    model = AutoModelForCausalLM.{load}({arg})"]
    else:
        lines.append("fla cannot express this layout: see fla_config_unsupported.txt")
    return lines
