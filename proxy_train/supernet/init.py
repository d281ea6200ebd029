"""How a supernet's linear branches start (`SupernetTrain.init`), before its own training.

- ``transfer``: issue 31's stage 1 ("attention transfer"): for each kind, every layer's mixer trained to reproduce
  the teacher layer's attention output on the teacher's own activations, once per (teacher, kind, recipe) and cached
  beside the teacher (`hyla.proxy_train.retrofit.transfer`). The branch of kind k at layer i takes that mixer.
- ``mapped``: the attention projections mapped into each kind (`hyla.proxy_train.retrofit.mapping.map_attention`,
  neutral start: the branch adds nothing until it trains).
- ``fresh``: the LM's own init (`hyla.proxy_train.model.lm.init_weights`, width-scaled std, seeded).

The store's `init_recipe` names what decides the result, which enters the supernet's cache key.
"""

from __future__ import annotations

from collections.abc import Callable
import torch

from hyla.config import ConfigError
from hyla.proxy_train.model.lm import init_weights
from hyla.proxy_train.supernet.model import Supernet
from hyla.proxy_train.train.config import width_scaled_std
from hyla.space.layout import LayerSpec

#: a linear spec (kind and options) -> the teacher's stage-1 mixer of that kind for every layer (state dicts)
TransferSource = Callable[[LayerSpec], list[dict[str, torch.Tensor]]]


def initialise(net: Supernet, how: str, seed: int = 0, transfer: TransferSource | None = None) -> None:
    """Set every linear branch of ``net`` as ``how`` says (module docstring); the store's `init_recipe` names it.
    Not under ``no_grad``: ``transfer`` may train stage 1 first.

    Args:
        net: the supernet (branches changed in place).
        how: ``transfer``, ``mapped`` or ``fresh``.
        seed: seed of ``fresh``.
        transfer: where ``transfer`` gets the stage-1 mixers from (required for it).
    """
    branches = [(int(i), name, mixer) for i, layer in net.branches.items() for name, mixer in layer.items()]
    if how == "fresh":
        torch.manual_seed(seed)
        for _, _, mixer in branches:
            init_weights(mixer, width_scaled_std(net.shape.d_model), net.shape.n_layers)
        return
    if how == "mapped":
        from hyla.proxy_train.retrofit.mapping import map_attention

        for i, _, mixer in branches:
            map_attention(mixer, net.teacher_attention(i), start="neutral")
        return
    if how == "transfer":
        if transfer is None:
            raise ConfigError("supernet.train.init: transfer needs the teacher's stage-1 cache (a retrofit recipe)")
        states = {name: transfer(spec) for name, spec in net.branch_specs.items()}
        for i, name, mixer in branches:
            mixer.load_state_dict(states[name][i], strict=True)
        return
    raise ConfigError(f"supernet.train.init: {how!r} is not allowed; expected transfer, mapped or fresh")
