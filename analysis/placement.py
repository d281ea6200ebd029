"""`hyla analysis placement MODEL --attention-layers K`: which K layers of a trained Transformer keep attention.

MODEL is a `hyla train` checkpoint (run dir, checkpoint dir or saved model dir; an all-attention layout) or a local
HF Llama-family model directory (`hyla.proxy_train.model.llama`). The steps, every expensive one cached under the
cache dir (`hyla.proxy_train.retrofit.cache`, keyed by the model's weights):

1. stage 1 (issue 31's attention transfer, `hyla.proxy_train.retrofit.transfer`): every layer's ``--mixer`` mixer
   learns to stand in for that layer's attention on the model's own activations;
2. a placement supernet (`hyla.proxy_train.supernet`): every layer offers the model's attention and that mixer,
   starting from stage 1; it is distilled to the model for ``--supernet-steps`` steps on placements sampled with
   each layer attention with probability K / n_layers (0 steps: stage 1 alone);
3. per-layer importance: the KL to the model and the recall drop when that layer alone becomes linear;
4. the placement: a beam search over K attention layers (``--beam``; 1 = greedy) by inherited recall (ties by KL)
   or KL (``--objective``), beside the uniform placement and the K most important layers, all scored alike.

Outputs in ``--out``: ``layout.yaml`` (the chosen layout), ``placement.json`` (everything measured, the recipe and
the cache keys) and ``report.html`` (per-layer importance plotted, the candidates compared; self-contained).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hyla.config import ConfigError
from hyla.space.layout import LayerSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlacementRequest:
    """What `run_placement` does (the command's options).

    Attributes:
        model: MODEL (checkpoint or HF directory).
        attention_layers: K.
        mixer: the linear kind of the other layers (``hyla.space.mixer_kinds``).
        beam: beam width of the search (1 = greedy).
        objective: ``recall`` (ties by KL) or ``kl`` (`hyla.proxy_train.supernet.placement.OBJECTIVES`).
        levels: the recall level set scored and trained on (a ``RecallSuite`` level set).
        seq_len: row length.
        transfer_steps: stage-1 steps.
        supernet_steps: supernet distillation steps (0: score stage 1 alone).
        eval_examples: held-out examples per level.
        out: output directory.
        cache_dir: cache directory (None: ``$HYLA_CACHE_DIR``, else ``~/.cache/hyla``).
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: supernet seed (sampling and row order).
    """

    model: str
    attention_layers: int
    mixer: str = "gdn"
    beam: int = 3
    objective: str = "recall"
    levels: str = "retrofit-tiny"
    seq_len: int = 128
    transfer_steps: int = 300
    supernet_steps: int = 200
    eval_examples: int = 128
    out: str = "placement"
    cache_dir: str | None = None
    device: str = "auto"
    seed: int = 0


def load_model(path: str | Path) -> tuple[Any, str]:
    """MODEL as an all-attention `HylaLM` and what it is (``llama`` or ``hyla``); ConfigError otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"MODEL: {path} does not exist")
    config = p / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") != "hyla":
        from hyla.proxy_train.model.llama import load_llama

        return load_llama(p), "llama"
    from hyla.analysis.export_weights import load_run_weights
    from hyla.proxy_train.model.lm import HylaLM

    weights = load_run_weights(p)
    linear = [i for i, s in enumerate(weights.layout.layers) if not s.is_attention or s.window is not None]
    if linear:
        raise ConfigError(f"MODEL: {path} is {weights.layout.layer_string()}; placement starts from a Transformer "
                          f"(full attention in every layer; layers {linear} are not)")
    model = HylaLM(weights.layout)
    state = {k.removeprefix("model."): v for k, v in weights.state_dict.items()}
    model.load_state_dict(state, strict=True)
    return model.eval(), "hyla"


def run_placement(req: PlacementRequest, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole command (module docstring); returns what ``placement.json`` holds."""
    import torch

    from hyla.proxy_train.retrofit.config import RetrofitConfig
    from hyla.proxy_train.retrofit.data import RetrofitData
    from hyla.proxy_train.supernet.config import SupernetScore
    from hyla.proxy_train.supernet.placement import OBJECTIVES, placed, placement_supernet, search_placement
    from hyla.proxy_train.supernet.score import eval_rows
    from hyla.proxy_train.supernet.store import state_key

    t0 = time.perf_counter()

    if req.objective not in OBJECTIVES:
        raise ConfigError(f"--objective: {req.objective!r} is not allowed; expected one of {', '.join(OBJECTIVES)}")
    if req.beam < 1 or req.transfer_steps < 0 or req.supernet_steps < 0:
        raise ConfigError(f"--beam {req.beam} must be >= 1, --transfer-steps {req.transfer_steps} and "
                          f"--supernet-steps {req.supernet_steps} >= 0")
    if req.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device: {req.device!r} is not allowed; expected auto, cpu or cuda")
    out = Path(req.out)
    if (out / "placement.json").exists():
        raise ConfigError(f"--out: {out} already holds a placement.json; choose another directory")
    teacher, source = load_model(req.model)
    n = teacher.layout.n_layers
    if not 1 <= req.attention_layers <= n:
        raise ConfigError(f"--attention-layers: {req.attention_layers} must be in [1, {n}] ({req.model} has {n} "
                          "layers)")
    linear = LayerSpec(mixer=req.mixer)
    teacher.layout.with_layers([linear] * n)  # the kind must fit this width: ConfigError before any work
    rcfg = RetrofitConfig.from_dict({"levels": req.levels, "seq_len": req.seq_len, "eval_examples": req.eval_examples,
                                     "transfer": {"steps": req.transfer_steps}, "cache_dir": req.cache_dir,
                                     "device": req.device}, "placement")
    device = torch.device("cuda" if req.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if req.device == "auto" else req.device))
    data = RetrofitData(rcfg.levels, teacher.layout.vocab_size, rcfg.seq_len, rcfg.text, pool_rows=rcfg.pool_rows,
                        eval_examples=rcfg.eval_examples, eval_text_rows=rcfg.eval_text_rows)
    key = state_key(teacher)
    log(f"placement: {source} model {key} ({teacher.layout.n_layers} layers, d {teacher.layout.d_model}); "
        f"stage 1 for {req.mixer}")
    net, info, stage1 = placement_supernet(teacher, key, data, rcfg, linear, req.attention_layers,
                                           req.supernet_steps, device, req.seed, log=log)
    score_cfg = SupernetScore(eval_examples=req.eval_examples, eval_text_rows=rcfg.eval_text_rows)
    found = search_placement(net, eval_rows(data, teacher, score_cfg, device), linear, req.attention_layers,
                             score_cfg, req.beam, req.objective, log=log)
    layout = teacher.layout.with_layers(placed(n, found["attention"], linear),
                                        name=f"{req.mixer}-at{','.join(map(str, found['attention']))}")
    out.mkdir(parents=True, exist_ok=True)
    layout.dump(out / "layout.yaml")
    record = {"model": str(req.model), "source": source, "model_key": key, "request": dataclasses.asdict(req),
              "layout": layout.to_dict(), **found,
              "stage1_error": {"before": stage1.error_before, "after": stage1.error_after},
              "supernet": {k: info.get(k) for k in ("key", "cached", "train_s", "init_s")},
              "wall_s": time.perf_counter() - t0}
    (out / "placement.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    from hyla.analysis.placement_report import write_placement_report

    write_placement_report(record, layout, out / "report.html")
    log(f"placement: attention at {found['attention']} -> {out / 'layout.yaml'}, {out / 'report.html'}")
    return record
