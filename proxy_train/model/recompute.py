"""What `HylaLM`'s ``gradient_checkpointing`` may say, without torch (configs check it before anything loads).

Recomputing activations in the backward pass trades compute for memory, which buys a larger micro-batch:

- ``False``: keep every activation;
- ``True`` or ``"block"``: keep only each block's input, recompute the whole block (least memory);
- ``"mixer"`` / ``"mlp"``: recompute only that half of every block (selective: the other half keeps its
  activations, so less is recomputed and less memory saved). The MLP half holds the widest activations
  (``mlp_hidden`` wide) for the least compute; the mixer half holds the mixer's inputs and gates.
"""

from __future__ import annotations

__all__ = ["CHECKPOINTING", "recompute_mode"]

#: the values of ``gradient_checkpointing``
CHECKPOINTING: tuple[bool | str, ...] = (False, True, "block", "mixer", "mlp")


def recompute_mode(setting: bool | str) -> str | None:
    """``"block"``, ``"mixer"`` or ``"mlp"`` for a setting that recomputes, None for False.

    Raises:
        ValueError: a value outside `CHECKPOINTING`.
    """
    if setting not in CHECKPOINTING or isinstance(setting, int) and not isinstance(setting, bool):
        raise ValueError(f"gradient_checkpointing: {setting!r}; expected one of {', '.join(map(str, CHECKPOINTING))}")
    if setting is True:
        return "block"
    return setting or None
