"""Many layouts through one supernet at once: rows routed per layer to the path their layout chose.

`run_many(net, inputs, layouts)` walks the layers once. It keeps a list of nodes, each a hidden state ``(rows, T,
D)`` and the layouts it stands for:

- Scoring (``rows=None``): every layout sees all of ``inputs``, so all start in one node; at layer ``i`` a node
  splits by the spec its layouts chose there. Layouts that agree on layers ``0..i`` share one node up to ``i``
  (prefix sharing): sorting a batch of layouts (`prefix_order`) lets neighbours share the most.
- Training (``rows=[index tensors]``): layout ``j`` sees only its own rows; each starts as its own node.

At each layer the nodes that chose the same spec are concatenated along the batch and run through that path in one
call (one kernel per distinct spec, not per layout); the MLP of the layer then runs once over every node. The
arithmetic per row is the stand-alone block's (`Supernet.run_layer`, `Supernet.mlp`), so a layout's rows come out
as its own model would produce them (up to float reassociation across batch shapes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hyla.proxy_train.supernet.choices import check_in_choices
from hyla.proxy_train.supernet.model import Supernet
from hyla.space.layout import LayerSpec


@dataclass
class Node:
    """A hidden state ``x`` (rows, T, D) shared by the layouts ``members`` (indices into the call's list)."""

    x: torch.Tensor
    members: list[int]


def prefix_order(layouts: Sequence[Sequence[LayerSpec]]) -> list[int]:
    """Indices of ``layouts`` sorted by their layer specs from the first layer on (shared prefixes adjacent)."""
    return sorted(range(len(layouts)), key=lambda j: [str(s.to_obj()) for s in layouts[j]])


def run_many(net: Supernet, inputs: torch.Tensor, layouts: Sequence[Sequence[LayerSpec]],
             rows: Sequence[torch.Tensor] | None = None,
             on_layer: Callable[[int, list[Node]], None] | None = None) -> list[Node]:
    """The last block's output for every layout (module docstring).

    Args:
        net: the supernet.
        inputs: (B, T) token ids.
        layouts: one sequence of layer specs per layout (each in the supernet's choices).
        rows: per layout, the rows of ``inputs`` it sees (None: every layout sees all rows).
        on_layer: called with ``(layer, nodes)`` after each layer (e.g. a per-layer feature loss).

    Returns:
        The final nodes; every layout index is a member of exactly one. Apply ``net.base.logits`` to a node's ``x``.
    """
    for j, layers in enumerate(layouts):
        check_in_choices(layers, net.choices, f"layouts[{j}]")
    if rows is not None and len(rows) != len(layouts):
        raise ValueError(f"run_many: {len(rows)} row sets for {len(layouts)} layouts")
    emb = net.base.embed(inputs)
    if rows is None:
        nodes = [Node(emb, list(range(len(layouts))))]
    else:
        nodes = [Node(emb[r], [j]) for j, r in enumerate(rows)]
    tables = net.bound_tables()
    for i in range(net.shape.n_layers):
        norm = net.base.blocks[i].mixer_norm
        groups: dict[LayerSpec, list[tuple[Node, torch.Tensor, list[int]]]] = {}
        for node in nodes:
            normed = norm(node.x)
            split: dict[LayerSpec, list[int]] = {}
            for m in node.members:
                split.setdefault(layouts[m][i], []).append(m)
            for spec, members in split.items():
                groups.setdefault(spec, []).append((node, normed, members))
        mixed: list[torch.Tensor] = []
        members_of: list[list[int]] = []
        for spec, items in groups.items():
            x = _cat([node.x for node, _, _ in items])
            mixed.append(x + net.mix(i, spec, _cat([normed for _, normed, _ in items]), tables))
            members_of += [members for _, _, members in items]
        sizes = [len(node.x) for spec_items in groups.values() for node, _, _ in spec_items]
        out = net.mlp(i, _cat(mixed)).split(sizes)
        nodes = [Node(x, members) for x, members in zip(out, members_of)]
        if on_layer is not None:
            on_layer(i, nodes)
    return nodes


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)
