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


def info_nce_with_grad(q: torch.Tensor, p: torch.Tensor, group_size: int, temperature: float = 0.02,
                       label_offset: int = 0, chunk_size: int = 32
                       ) -> tuple[torch.Tensor, dict, torch.Tensor, torch.Tensor]:
    """:func:`info_nce` and its gradient w.r.t. ``q`` and ``p``, computed ``chunk_size`` queries at a time.

    Gradient caching needs d loss / d embeddings for the whole global batch; the full score matrix
    (queries x all passages, plus its softmax and gradient) would grow with the square of the batch, so
    the rows are processed in chunks and only ``chunk_size x len(p)`` scores exist at once. The loss is
    the mean over all queries, exactly as :func:`info_nce`.
    """
    n = q.shape[0]
    q_grad = torch.empty_like(q, dtype=torch.float32)
    p_leaf = p.detach().float().requires_grad_()
    p_grad = torch.zeros_like(p_leaf)
    total = torch.zeros((), dtype=torch.float32, device=q.device)
    sums: dict = {}
    for start in range(0, n, chunk_size):
        qc = q[start:start + chunk_size].detach().float().requires_grad_()
        m = qc.shape[0]
        loss, stats = info_nce(qc, p_leaf, group_size, temperature, label_offset + start * group_size)
        loss = loss * (m / n)  # this chunk's share of the mean over all queries
        gq, gp = torch.autograd.grad(loss, [qc, p_leaf])
        q_grad[start:start + m] = gq
        p_grad += gp
        total += loss.detach()
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v * m
    return total, {k: v / n for k, v in sums.items()}, q_grad.to(q.dtype), p_grad.to(p.dtype)
