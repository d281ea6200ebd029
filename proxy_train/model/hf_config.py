"""`HylaConfig`: the transformers config of a hyla model (``model_type="hyla"``), kept apart from the model.

This module needs transformers' ``PretrainedConfig`` and hyla's `Layout` only (no fla, no hyla mixers), so
`hyla._hf_auto` can register it with ``AutoConfig`` as soon as transformers' Auto module loads, at no cost to
``import hyla``. The model class is registered lazily: every `HylaConfig` built calls `HylaConfig.after_build`,
which `hyla._hf_auto` sets (when it registers the config) to import ``hyla.proxy_train.model.hf``; that module
registers `HylaForCausalLM` with ``AutoModelForCausalLM``. It happens inside
``AutoModelForCausalLM.from_pretrained``/``from_config`` before the model class is looked up, so ``import hyla``
is enough for both. This module never imports the model module itself (the model imports this one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from transformers import PretrainedConfig

from hyla.space.layout import Layout


class HylaConfig(PretrainedConfig):
    """Transformers config for a hyla hybrid LM.

    Args:
        layout: ``Layout.to_dict()`` (or a `Layout`); None only for transformers' internal default construction.
        gradient_checkpointing: recompute activations in backward during training: True or ``"block"`` whole
            blocks, ``"mixer"`` or ``"mlp"`` that half of every block (`HylaLM`).
        fuse_linear_cross_entropy: on CUDA, a forward with labels computes the loss with fla's
            ``FusedLinearCrossEntropyLoss`` on the final hidden states and the head weight (chunked: the
            ``(B, T, vocab)`` logits are never materialised; the output's ``logits`` is then None), as fla's models.
        fuse_norm: fla's fused RMSNorm (with the residual add) on CUDA, as fla's ``fuse_norm``.
        fuse_swiglu: fla's fused SwiGLU + down projection on CUDA, as fla's ``fuse_swiglu``.
        The fused options change kernels only: parameters and names stay, a checkpoint loads either way.
    """

    model_type = "hyla"
    #: called after every HylaConfig is built (set by `hyla._hf_auto`: registers the model class)
    after_build: ClassVar[Callable[[], None] | None] = None

    def __init__(self, layout: dict[str, Any] | Layout | None = None, gradient_checkpointing: bool | str = False,
                 fuse_linear_cross_entropy: bool = False, fuse_norm: bool = False, fuse_swiglu: bool = False,
                 **kwargs: Any) -> None:
        if isinstance(layout, Layout):
            layout = layout.to_dict()
        self.layout = dict(layout) if layout is not None else None
        self.gradient_checkpointing = gradient_checkpointing
        self.fuse_linear_cross_entropy = fuse_linear_cross_entropy
        self.fuse_norm = fuse_norm
        self.fuse_swiglu = fuse_swiglu
        if self.layout is not None:
            # Mirror the standard names so generic transformers utilities find them.
            kwargs.setdefault("vocab_size", self.layout["vocab_size"])
            kwargs.setdefault("hidden_size", self.layout["d_model"])
            kwargs.setdefault("num_hidden_layers", len(self.layout["layers"]))
            kwargs.setdefault("num_attention_heads", self.layout["num_heads"])
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        # loading transformers' Auto module runs hyla._hf_auto's hook (once), which sets `after_build`
        import transformers.models.auto.configuration_auto  # noqa: F401

        if HylaConfig.after_build is not None:
            HylaConfig.after_build()

    def to_layout(self) -> Layout:
        """The `Layout` this config describes (validated)."""
        if self.layout is None:
            raise ValueError("HylaConfig has no layout")
        return Layout.from_dict(self.layout, where="HylaConfig.layout")
