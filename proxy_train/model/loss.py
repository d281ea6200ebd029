"""The loss of hyla's LM: the token-mean cross-entropy that proxies, full runs and the transformers wrapper share.

Targets follow PyTorch's convention: ``IGNORE`` (-100) marks a position that is not scored (padding, the prompt
part of a recall task, text before the first answer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: target id of a position that is not scored (``F.cross_entropy``'s default ``ignore_index``)
IGNORE = -100


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, T, V) logits against (B, T) targets in fp32, averaged over the scored tokens."""
    return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE)
