"""The one evaluator (`hyla.proxy_train.train.evaluate`) that proxies, the recall suite and full runs score with."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hyla.proxy_train.train.evaluate import autocast_logits, level_accuracy, lm_loss
from hyla.proxy_train.tasks.common import IGNORE, span_exact_match


def _table_logits(table: torch.Tensor):
    """A 'model' whose logits at each position are ``table[token]``: predictions are known exactly."""
    return autocast_logits(lambda x: table[x], torch.device("cpu"), bf16=False)


def test_lm_loss_is_a_token_mean_over_uneven_batches_and_ignores_unscored_targets() -> None:
    g = torch.Generator().manual_seed(0)
    table = torch.randn(11, 11, generator=g)
    x = torch.randint(0, 11, (5, 7), generator=g)
    y = torch.randint(0, 11, (5, 7), generator=g)
    y[0, :3] = IGNORE
    y[4] = IGNORE
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]  # 2 + 3 rows: a mean of batch means would weigh them alike
    loss, count = lm_loss(_table_logits(table), batches)
    keep = y != IGNORE
    assert count == int(keep.sum()) == 5 * 7 - 3 - 7
    torch.testing.assert_close(torch.tensor(loss), F.cross_entropy(table[x][keep], y[keep]), rtol=1e-6, atol=1e-6)
    nothing, zero = lm_loss(_table_logits(table), [(x[:1], torch.full_like(y[:1], IGNORE))])
    assert zero == 0 and nothing != nothing  # NaN: nothing scored


def test_level_accuracy_averages_scored_examples_in_any_batch_size() -> None:
    table = torch.eye(6) * 5  # predicts the input token itself
    x = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 4, 4], [5, 5, 5]])
    y = torch.full_like(x, IGNORE)
    y[0] = torch.tensor([1, 2, 3])  # all right: 1.0
    y[1] = torch.tensor([1, 0, IGNORE])  # half right: 0.5
    y[2, 2] = 0  # wrong: 0.0; example 3 has nothing scored and is left out
    for batch_size in (1, 3, 8):
        assert level_accuracy(_table_logits(table), x, y, batch_size) == 0.5
    assert level_accuracy(_table_logits(table), x[3:], y[3:], 2) == 0.0  # nothing scored at all
    # RULER-style scoring: whole answers (a run of scored positions) must be right
    assert level_accuracy(_table_logits(table), x[:2], y[:2], 2, span_exact_match) == 0.5
