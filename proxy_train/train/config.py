"""`TrainConfig`: the settings every hyla LM training shares, proxy or full run, with one meaning and one check;
`TextConfig`: where its text comes from.

Two configurations extend it, each with its own defaults and its own extra fields:

- `hyla.proxy_train.proxy.config.ProxyConfig`: a short proxy run (``hyla proxy train``, a search trial);
- `hyla.proxy_train.train.full_spec.RunSpec`: a 340M / 1.3B run on Ray Train (``hyla train``).

Both loops read these fields the same way: the data (``seq_len``, ``text``, ``tokenizer``, ``seed``), AdamW
(``weight_decay`` on matrices, ``betas``, ``grad_clip``) and the one learning-rate schedule
(`schedule.wsd_lr`: ``lr``, the warm-up, ``decay_fraction``, ``min_lr_ratio``). The warm-up keeps its name in
each (``warmup`` in a proxy config, ``warmup_steps`` in a run spec; both count optimizer steps), so the YAML files
users already have stay valid; ``WARMUP_FIELD`` names it for the shared check.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from hyla.config import ConfigError, from_mapping
from hyla.proxy_train.model.recompute import CHECKPOINTING
from hyla.proxy_train.train.schedule import check_optimizer

if TYPE_CHECKING:
    import torch

__all__ = ["LOCAL_SUFFIXES", "SAMPLE", "TextConfig", "TrainConfig", "width_scaled_std"]

def width_scaled_std(d_model: int) -> float:
    """The init std that gives a model of width ``d_model`` the per-layer gain of fla's flat 0.02 at width 1024:
    ``0.02 * sqrt(1024 / d_model)`` (0.02 at 1024, 0.04 at 256, 0.08 at 64). Proxies and probes use it when no
    ``init_std`` is set: at small widths a flat 0.02 leaves attention logits too small for recall to form within
    a proxy's budget (docs/proxy-recipe.md)."""
    return 0.02 * math.sqrt(1024 / d_model)


#: file types a local text source may hold (`hyla.proxy_train.train.text`)
LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
#: The text source name of the prose sample shipped with hyla (`hyla.proxy_train.train.text.sample_path`).
SAMPLE = "wikitext2-sample"


@dataclass(frozen=True, kw_only=True)
class TextConfig:
    """Where LM text comes from and how it is split (the sources: `hyla.proxy_train.train.text`)."""

    source: str = "stdlib"  # "stdlib" | "wikitext2-sample" | local file/dir | hub dataset name
    config: str | None = None  # hub dataset config (e.g. "wikitext-2-raw-v1")
    split: str = "train"  # hub split to stream
    text_field: str = "text"  # column holding the text (json/parquet/hub)
    max_docs: int | None = None  # keep the first N documents (hub: the N streamed and cached)
    val_fraction: float = 0.05  # share of documents held out for validation
    seed: int = 0  # fixes the train/val split
    cache_dir: str | None = None  # hub cache (default $HYLA_CACHE_DIR/text, ~/.cache/hyla/text)

    def __post_init__(self) -> None:
        if not self.source:
            raise ConfigError(f"text.source: '' is empty; expected 'stdlib', {SAMPLE!r}, a local path or a hub "
                              "dataset name")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"text.val_fraction: {self.val_fraction!r} must be in [0, 1)")
        if self.max_docs is not None and self.max_docs < 1:
            raise ConfigError(f"text.max_docs: {self.max_docs!r} must be >= 1 or null")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "text") -> TextConfig:
        """Parse a mapping strictly (unknown keys refused)."""
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings shared by proxy runs and full runs (subclasses set their own defaults).

    Attributes:
        seq_len: training context T.
        tokens: training token budget (None: the subclass's default budget or its ``steps``).
        lr: peak learning rate.
        min_lr_ratio: the cosine's floor as a fraction of ``lr``.
        decay_fraction: share of the post-warm-up steps (the last ones) over which the lr decays by a cosine to
            the floor; before that it stays at ``lr`` (warmup-stable-decay). 1.0 = a cosine over every
            post-warm-up step.
        weight_decay: AdamW decay on matrices and embeddings (norms, biases, fla's A_log/dt_bias excluded).
        betas: AdamW betas.
        grad_clip: global grad-norm clip (0 = off).
        seed: seeds the model init, the data order and the synthetic tasks.
        text: LM corpus (`hyla.proxy_train.train.text.TextConfig`).
        tokenizer: ``byte`` or a transformers tokenizer name/path.
        compile: torch.compile on CUDA (what is compiled is the loop's choice; ignored on CPU).
        gradient_checkpointing: recompute activations in backward (less activation memory): true or ``block``
            whole blocks, ``mixer`` or ``mlp`` that half of every block (selective; `HylaLM`).
        log_every: optimizer steps between log lines.
    """

    #: the subclass's warm-up field (optimizer steps)
    WARMUP_FIELD: ClassVar[str] = "warmup"

    seq_len: int = 64
    tokens: int | None = None
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    decay_fraction: float = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    text: TextConfig = field(default_factory=TextConfig)
    tokenizer: str = "byte"
    compile: bool = False
    gradient_checkpointing: bool | str = field(default=False, metadata={"choices": CHECKPOINTING})
    log_every: int = 10

    def check_training(self, prefix: str) -> None:
        """Refuse bad shared settings with one line naming the field (``prefix`` starts it, e.g.
        ``"proxy config."``); subclasses call it from ``__post_init__``."""
        for name in ("seq_len", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name}: {getattr(self, name)!r} must be >= 1")
        if self.tokens is not None and self.tokens < 1:
            raise ConfigError(f"{prefix}tokens: {self.tokens!r} must be >= 1")
        check_optimizer(prefix, {name: getattr(self, name) for name in (
            "lr", self.WARMUP_FIELD, "min_lr_ratio", "decay_fraction", "weight_decay", "grad_clip", "betas")})

    def make_optimizer(self, model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
        """The optimizer of every LM loop: AdamW over ``model.param_groups(weight_decay)`` (a `HylaLM`: decay on
        matrices and the embedding only) at the peak ``lr`` with ``betas``, fused on CUDA. The loop sets each
        step's lr from `schedule.wsd_lr`."""
        import torch

        return torch.optim.AdamW(model.param_groups(self.weight_decay), lr=self.lr, betas=tuple(self.betas),
                                 fused=device.type == "cuda")
