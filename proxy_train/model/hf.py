"""Hugging Face wrappers: `HylaConfig` / `HylaForCausalLM` (``model_type="hyla"``).

Importing this module registers both with ``AutoConfig`` and ``AutoModelForCausalLM``; ``import hyla`` alone is
enough too (`hyla._hf_auto` registers the config lazily, and the first `HylaConfig` built imports this module), so
a saved run loads with ``import hyla`` then ``AutoModelForCausalLM.from_pretrained(dir)``. `HylaConfig` lives in
`hyla.proxy_train.model.hf_config` (no torch/fla) and is re-exported here. The config carries the whole `Layout` as a
plain dict (``Layout.to_dict()``), so the checkpoint is self-describing.

Generation: hyla's mixers keep one state per layer (KV caches for softmax heads, recurrent + conv states for linear
mixers), not the key/value layers of transformers' ``DynamicCache``. The model therefore opts out of the default
cache (``_supports_default_dynamic_cache() -> False``); its forward creates a `HylaCache` (the per-layer state list
plus a token counter) on the first call with ``use_cache=True`` and returns it as the output's ``cache``
(``past_key_values`` before transformers 5). ``generate``
hands it back on every step and, because a cache is in use, feeds only the newest token (transformers slices the
inputs with ``next_sequence_length=1``), so decoding is truly incremental.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from hyla.proxy_train.model.hf_config import HylaConfig
from hyla.proxy_train.model.lm import HylaLM, LayerState
from hyla.proxy_train.model.loss import token_loss
from hyla.proxy_train.model.parts import triton_kernels_on

__all__ = ["HylaCache", "HylaConfig", "HylaForCausalLM"]

#: The output field of the cache: transformers 5.x calls it ``cache`` (``past_key_values`` is deprecated there and
#: warns once per process), 4.x ``past_key_values``.
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class HylaCache:
    """Generation cache: one mixer state per layer plus the number of tokens already consumed."""

    def __init__(self, states: list[LayerState] | None = None, seen_tokens: int = 0) -> None:
        self.states = states
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.states or ())

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search): every tensor in every state is indexed along dim 0 (states are flat
        dicts; a head-wise layer's keys are prefixed ``lin.``/``attn.``)."""
        for state in self.states or ():
            if state is None:
                continue
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.index_select(0, beam_idx.to(value.device))


class HylaForCausalLM(PreTrainedModel, GenerationMixin):
    """`HylaLM` behind the transformers causal-LM interface (loss, save/load, ``generate``)."""

    config_class = HylaConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HybridBlock"]

    def __init__(self, config: HylaConfig) -> None:
        super().__init__(config)
        self.model = HylaLM(config.to_layout(), gradient_checkpointing=config.gradient_checkpointing,
                            fuse_norm=config.fuse_norm,
                            fuse_swiglu=config.fuse_swiglu)
        #: `head_loss`, or its torch.compile'd form (`compile_regions`); a plain attribute
        self.head_loss_fn = self.head_loss
        self.post_init()

    def head_loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the last block's output and their cross entropy against ``targets`` (the first
        ``targets.shape[1]`` positions: ``labels[:, 1:]`` is scored against the logits of positions ``:-1``)."""
        logits = self.model.logits(hidden)
        return logits, token_loss(logits[:, :targets.shape[1]], targets)

    def compile_regions(self, **options: Any) -> None:
        """torch.compile the plain-torch regions in place: the blocks' (`HylaLM.compile_blocks`) and the final
        norm, head and cross entropy (fused by Inductor instead of an fp32 copy of the logits); fla's kernels and
        the fused loss stay eager. Parameters and state-dict keys are unchanged."""
        self.model.compile_blocks(**options)
        self.head_loss_fn = torch.compile(self.head_loss, **{"dynamic": False, **options})

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # Our per-layer states are not key/value layers; we build HylaCache ourselves in forward.
        return False

    def _init_weights(self, module: torch.nn.Module) -> None:
        # HylaLM initialises itself in its constructor; from_pretrained overwrites with the checkpoint.
        pass

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.model.embeddings

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        self.model.embeddings = value

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.model.lm_head

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.model.lm_head = value

    def forward(self, input_ids: torch.LongTensor, past_key_values: HylaCache | None = None,
                use_cache: bool | None = None, labels: torch.LongTensor | None = None,
                attention_mask: torch.Tensor | None = None, return_dict: bool | None = None,
                cache: HylaCache | None = None, shift_labels: torch.LongTensor | None = None,
                **kwargs: Any) -> CausalLMOutputWithPast:
        """Causal-LM forward.

        Args:
            input_ids: (B, T) ids (during cached generation only the new tokens).
            past_key_values: a `HylaCache` from the previous step (or None).
            cache: the same under its newer name (transformers >= 5.2x passes ``cache=`` to ``generate``'s steps
                and warns that ``past_key_values`` is deprecated); either one is read.
            use_cache: return an updated `HylaCache`.
            labels: (B, T) ids; the loss is next-token cross entropy (shifted here), -100 ignored.
            shift_labels: (B, T) targets already aligned with the positions (transformers' name; no shift), in
                place of ``labels``: a training loop's ``(input_ids, targets)`` windows.
            With ``config.fuse_linear_cross_entropy`` on CUDA the loss never materialises the logits (None).
            attention_mask: accepted for API compatibility; padding is not supported, so it must be all ones.
        """
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("HylaForCausalLM does not support padded batches (attention_mask has zeros)")
        use_cache = bool(use_cache) if use_cache is not None else False
        past_key_values = cache if cache is not None else past_key_values
        states = past_key_values.states if past_key_values is not None else None
        hidden, new_states = self.model.hidden(input_ids, states=states, use_cache=use_cache)
        targets = shift_labels if shift_labels is not None else labels[:, 1:] if labels is not None else None
        loss, logits = None, None
        if targets is not None and self.config.fuse_linear_cross_entropy and triton_kernels_on(hidden):
            from fla.modules import FusedLinearCrossEntropyLoss

            h = self.model.norm(hidden)
            h = h if shift_labels is not None else h[:, :-1]
            loss = FusedLinearCrossEntropyLoss()(h, targets, self.model.lm_head.weight)
        elif targets is not None:
            logits, loss = self.head_loss_fn(hidden, targets)
        else:
            logits = self.model.logits(hidden)
        cache = None
        if use_cache:
            seen = (past_key_values.seen_tokens if past_key_values is not None else 0) + input_ids.shape[1]
            cache = past_key_values if past_key_values is not None else HylaCache()
            cache.states, cache.seen_tokens = new_states, seen
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache})


AutoConfig.register("hyla", HylaConfig, exist_ok=True)
AutoModelForCausalLM.register(HylaConfig, HylaForCausalLM, exist_ok=True)
