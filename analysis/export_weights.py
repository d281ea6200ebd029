"""Trained weights for an export: read a `hyla train` checkpoint, write hyla- and fla-named copies.

`load_run_weights(path)` accepts what `hyla train` leaves behind (``hyla.proxy_train.train.full_run``):

- a run directory (holds ``spec.yaml``): its newest complete checkpoint (any attempt), else its ``model/``;
- one checkpoint directory ``RUN/ray/attempt_N/checkpoint_*/`` (``hyla_ckpt.json`` + ``state.pt``; the layout is
  read from ``RUN/spec.yaml``) or its ``state.pt``;
- a saved HF model directory (``config.json`` with ``model_type: hyla``, e.g. ``RUN/model/``).

hyla's names differ from fla's only above the layer: ``model.blocks.N.mixer.*`` / ``mixer_norm`` / ``model.lm_head``
against fla's ``model.layers.N.attn.*`` / ``attn_norm`` / ``lm_head``; inside a mixer the names are fla's own (hyla's
linear mixers subclass fla's layers, and hyla's attention uses fla's q/k/v/o_proj). `fla_state_dict` renames, and
refuses a key it does not know rather than guess.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.space.layout import Layout

#: files of a saved HF model directory that are not the tokenizer
_MODEL_FILES = re.compile(r"^(config\.json|generation_config\.json|model.*\.safetensors(\.index\.json)?|"
                          r"pytorch_model.*\.bin(\.index\.json)?|training_args\.bin)$")
_BLOCK = re.compile(r"^model\.blocks\.(\d+)\.([A-Za-z_]+)\.(.+)$")
_BLOCK_PARTS = {"mixer": "attn", "mixer_norm": "attn_norm", "mlp": "mlp", "mlp_norm": "mlp_norm"}


@dataclass
class RunWeights:
    """Weights of one trained model with the layout they belong to.

    Attributes:
        layout: the trained model's layout (from the run's ``spec.yaml`` or the HF config).
        state_dict: `HylaForCausalLM` parameter names -> CPU tensors.
        source: the checkpoint or model directory read.
        step: optimizer step of the checkpoint (None for an HF model directory).
        tokenizer_dir: a directory holding the run's saved tokenizer files, if any.
        tokenizer: the spec's tokenizer name (``byte`` or a transformers name/path), if known.
    """

    layout: Layout
    state_dict: dict[str, Any]
    source: Path
    step: int | None = None
    tokenizer_dir: Path | None = None
    tokenizer: str | None = None


def _spec_of(run_dir: Path, where: str):
    from hyla.proxy_train.train.full_spec import RunSpec

    spec_path = run_dir / "spec.yaml"
    if not spec_path.is_file():
        raise ConfigError(f"--checkpoint: {where} has no {spec_path} (the run's spec, which holds the layout)")
    return RunSpec.load(spec_path)


def _tokenizer_dir(model_dir: Path) -> Path | None:
    if not model_dir.is_dir():
        return None
    return model_dir if any(not _MODEL_FILES.match(p.name) for p in model_dir.iterdir() if p.is_file()) else None


def _from_checkpoint(ckpt: Path, run_dir: Path) -> RunWeights:
    import torch

    from hyla.proxy_train.train.full_spec import CKPT_META

    spec = _spec_of(run_dir, str(ckpt))
    meta = json.loads((ckpt / CKPT_META).read_text())
    state = torch.load(ckpt / "state.pt", map_location="cpu", mmap=True, weights_only=False)
    model_sd = {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state["model"].items()}
    return RunWeights(spec.resolve_layout(), model_sd, ckpt, int(meta["step"]), _tokenizer_dir(run_dir / "model"),
                      spec.tokenizer)


def _from_hf_dir(model_dir: Path) -> RunWeights:
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") != "hyla":
        raise ConfigError(f"--checkpoint: {model_dir}/config.json has model_type {cfg.get('model_type')!r}; "
                          "expected 'hyla' (a model saved by hyla)")
    model = HylaForCausalLM.from_pretrained(str(model_dir), config=HylaConfig.from_pretrained(str(model_dir)))
    return RunWeights(model.config.to_layout(), model.state_dict(), model_dir, None, _tokenizer_dir(model_dir))


def _check_fits(weights: RunWeights) -> RunWeights:
    """Refuse weights whose names or shapes differ from the model of their layout (built on the meta device)."""
    import torch

    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    with torch.device("meta"):
        model = HylaForCausalLM(HylaConfig(layout=weights.layout.to_dict()))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.state_dict.items()}
    missing, unexpected = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    wrong = sorted(k for k in set(want) & set(have) if want[k] != have[k])
    if missing or unexpected or wrong:
        raise ConfigError(f"--checkpoint: {weights.source} does not fit its layout {weights.layout.layer_string()}: "
                          f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. "
                          f"{unexpected[:2]}), {len(wrong)} of another shape (e.g. {wrong[:2]})")
    return weights


def load_run_weights(path: str | Path) -> RunWeights:
    """The weights and layout at ``path`` (a run dir, a checkpoint dir or ``state.pt``, or an HF model dir).

    Raises:
        ConfigError: ``path`` is none of these, a run directory holds no complete checkpoint or model, or the
            weights do not fit the layout they were saved with.
    """
    return _check_fits(_find_weights(path))


def _find_weights(path: str | Path) -> RunWeights:
    from hyla.proxy_train.train.full_run import find_latest_checkpoint
    from hyla.proxy_train.train.full_spec import CKPT_META

    p = Path(path).resolve()
    if not p.exists():
        raise ConfigError(f"--checkpoint: {path} does not exist")
    if p.is_file() and p.name == "state.pt":
        p = p.parent
    if (p / CKPT_META).is_file() and (p / "state.pt").is_file():
        return _from_checkpoint(p, p.parents[2])  # RUN/ray/attempt_N/checkpoint_X
    if (p / "spec.yaml").is_file():
        latest = find_latest_checkpoint(p)
        if latest is not None:
            return _from_checkpoint(latest[0], p)
        if (p / "model" / "config.json").is_file():
            return _from_hf_dir(p / "model")
        raise ConfigError(f"--checkpoint: run directory {p} holds no complete checkpoint (ray/*/checkpoint_*/) "
                          "and no model/; train first (`hyla train SPEC`)")
    if (p / "config.json").is_file():
        return _from_hf_dir(p)
    raise ConfigError(f"--checkpoint: {path} is not a hyla run directory (spec.yaml), a checkpoint directory "
                      f"({CKPT_META} + state.pt) or a saved model directory (config.json)")


def fla_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with fla's model-level names (tensors shared, not copied).

    Raises:
        ConfigError: a key outside hyla's model structure (embeddings, blocks, norm, lm_head).
    """
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        m = _BLOCK.match(key)
        if m and m.group(2) in _BLOCK_PARTS:
            new = f"model.layers.{m.group(1)}.{_BLOCK_PARTS[m.group(2)]}.{m.group(3)}"
        elif key.startswith("model.lm_head."):
            new = key[len("model."):]
        elif key.startswith(("model.embeddings.", "model.norm.")) or key == "model.lower_bounds":
            new = key
        else:
            raise ConfigError(f"checkpoint: parameter {key!r} has no fla name (expected model.embeddings.*, "
                              "model.blocks.N.{mixer,mixer_norm,mlp,mlp_norm}.*, model.norm.*, model.lm_head.*, "
                              "model.lower_bounds)")
        out[new] = value
    return out


def write_hyla_model(weights: RunWeights, out: Path) -> None:
    """`HylaForCausalLM` with ``weights`` saved into ``out`` (config.json + safetensors)."""
    from hyla.proxy_train.model.hf import HylaConfig, HylaForCausalLM

    model = HylaForCausalLM(HylaConfig(layout=weights.layout.to_dict()))
    model.load_state_dict(weights.state_dict, strict=True)  # checked by load_run_weights already
    model.save_pretrained(str(out))


def write_fla_model(weights: RunWeights, fla_cfg: dict[str, Any], out: Path, notes: list[str] = ()) -> None:
    """fla's ``config.json`` and fla-named ``model.safetensors`` in ``out`` (``from_pretrained(out)`` after
    ``import fla``). Tensors are written as they are (the checkpoint's dtype, fp32 for `hyla train`)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in fla_state_dict(weights.state_dict).items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    write_fla_config(fla_cfg, out, notes)


def write_fla_config(fla_cfg: dict[str, Any], out: Path, notes: list[str] = ()) -> None:
    """fla's config dict as ``out/config.json`` (with ``architectures``: fla's causal-LM class of that type, and
    ``hyla_export_notes``: where fla's model computes differently from hyla's, if anywhere)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from hyla.proxy_train.model.mixers.registry import quiet_fla

    with quiet_fla():
        import fla  # noqa: F401  (registers fla's model types)

    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(fla_cfg)
    kw = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")}
    cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.for_model(cfg["model_type"], **kw))]
    cfg["architectures"] = [cls.__name__]
    if notes:
        cfg["hyla_export_notes"] = list(notes)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def copy_tokenizer(weights: RunWeights, targets: list[Path]) -> list[str]:
    """Copy the run's saved tokenizer files into each target directory; returns the names copied."""
    if weights.tokenizer_dir is None:
        return []
    names = [p.name for p in weights.tokenizer_dir.iterdir() if p.is_file() and not _MODEL_FILES.match(p.name)]
    for target in targets:
        for name in names:
            shutil.copy2(weights.tokenizer_dir / name, target / name)
    return sorted(names)
