"""InfoNCE over a query's positive, its hard negatives, and every other passage of the (global) batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, p: torch.Tensor, group_size: int, temperature: float = 0.02,
             label_offset: int = 0) -> tuple[torch.Tensor, dict]:
    """Cross-entropy of ``q @ p.T / temperature`` where query ``i``'s positive is ``p[label_offset + i * G]``.

    ``p`` holds every passage the queries compete against: groups of ``G`` (positive first, then hard
    negatives), gathered from all devices, with this device's block starting at ``label_offset``.
    No query-query terms (the recipe). Returns the mean loss and detached batch statistics.
    """
    scores = q.float() @ p.float().T
    labels = label_offset + torch.arange(q.shape[0], device=q.device) * group_size
    loss = F.cross_entropy(scores / temperature, labels)
    with torch.no_grad():
        pos = scores.gather(1, labels[:, None]).squeeze(1)
        others = scores.scatter(1, labels[:, None], float("-inf"))
        stats = {
            "acc": (scores.argmax(dim=1) == labels).float().mean(),
            "pos_sim": pos.mean(),
            "hardest_neg_sim": others.max(dim=1).values.mean(),
        }
    return loss, stats
