"""`TrainConfig`: the settings every hyla LM training shares, proxy or full run, with one meaning and one check.

Two configurations extend it, each with its own defaults and its own extra fields:

- `hyla.proxy_train.proxy.config.ProxyConfig`: a short proxy run (``hyla proxy train``, a search trial);
- `hyla.proxy_train.train.full_spec.RunSpec`: a 340M / 1.3B run on Ray Train (``hyla train``).

Both loops read these fields the same way: the data (``seq_len``, ``text``, ``tokenizer``, ``seed``), AdamW
(``weight_decay`` on matrices, ``betas``, ``grad_clip``) and the one learning-rate schedule
(`lr_schedule.wsd_lr`: ``lr``, the warm-up, ``decay_fraction``, ``min_lr_ratio``). The warm-up keeps its name in
each (``warmup`` in a proxy config, ``warmup_steps`` in a run spec; both count optimizer steps), so the YAML files
users already have stay valid; ``WARMUP_FIELD`` names it for the shared check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from hyla.config import ConfigError
from hyla.proxy_train.train.text import TextConfig
from hyla.proxy_train.train.schedule import check_optimizer

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig"]


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
        gradient_checkpointing: recompute blocks in backward (less activation memory).
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
    gradient_checkpointing: bool = False
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
        step's lr from `lr_schedule.wsd_lr`."""
        import torch

        return torch.optim.AdamW(model.param_groups(self.weight_decay), lr=self.lr, betas=tuple(self.betas),
                                 fused=device.type == "cuda")
