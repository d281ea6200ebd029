"""Small pieces the supernet tests share: a `DistillData` of MQAR levels and random text, a tiny teacher, a space."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hyla.proxy_train.model.lm import HylaLM
from hyla.proxy_train.model.loss import IGNORE
from hyla.proxy_train.tasks.mqar import MQAR
from hyla.space.layout import ATTN
from hyla.space.search_space import HeadwiseSpace, SearchSpace

#: three layers of the mini scale, GLA/GDN per layer, free placement, head-wise layers with one softmax head
SPACE = SearchSpace(scale="mini", n_layers=3, mixers=("gla", "gdn"), per_layer_mixer=True, placements=("free",),
                    n_attention=(0,), headwise=HeadwiseSpace(heads=(0, 1)))


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    n_text: int


class ToyData:
    """MQAR levels (pools and held-out sets, right-padded to ``seq_len`` as `RetrofitData` pads them; the first
    level is half as long) and random-token "text" rows, with `RetrofitData`'s interface."""

    def __init__(self, vocab: int = 512, seq_len: int = 32, pairs: tuple[int, ...] = (2, 4), n_eval: int = 32,
                 pool: int = 256, seed: int = 0) -> None:
        self.generators = [MQAR(vocab_size=vocab, seq_len=seq_len // 2 if i == 0 else seq_len, num_kv_pairs=p,
                                task_vocab=64) for i, p in enumerate(pairs)]
        self.level_names = [g.level for g in self.generators]

        def pad(xy: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return (F.pad(xy[0], (0, seq_len - xy[0].shape[1])),
                    F.pad(xy[1], (0, seq_len - xy[1].shape[1]), value=IGNORE))

        pools = [pad(g.generate(pool, 2 * i)) for i, g in enumerate(self.generators)]
        self.pool_x, self.pool_y = torch.stack([p[0] for p in pools]), torch.stack([p[1] for p in pools])
        self.eval = {g.level: pad(g.generate(n_eval, 2 * i + 1)) for i, g in enumerate(self.generators)}
        g = torch.Generator().manual_seed(seed)
        self.text = torch.randint(0, 64, (128, seq_len + 1), generator=g)
        val = torch.randint(0, 64, (16, seq_len + 1), generator=g)
        self.eval_text = (val[:, :-1], val[:, 1:])

    def batch(self, rng: np.random.Generator, rows: int, n_text: int, admitted: int | None = None) -> Batch:
        level = np.arange(rows - n_text) % len(self.generators)
        pick = rng.integers(0, self.pool_x.shape[1], rows - n_text)
        windows = self.text[torch.as_tensor(rng.integers(0, len(self.text), n_text))]
        return Batch(torch.cat([windows[:, :-1], self.pool_x[level, pick]]),
                     torch.cat([windows[:, 1:], self.pool_y[level, pick]]), n_text)


def teacher(seed: int = 0, std: float = 0.02) -> HylaLM:
    """An untrained all-attention model of `SPACE`'s shape (``std``: its init; larger = more peaked logits)."""
    torch.manual_seed(seed)
    model = HylaLM(SPACE.base_layout([ATTN] * SPACE.depth))
    model.reset_parameters(std=std)
    return model
