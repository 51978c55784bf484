"""How spread out a set of embeddings is, and whether it has collapsed.

A contrastive run that diverges does not crash: every text ends up on (nearly) one direction, the loss
plateaus at log(batch passages) and retrieval falls to chance. Validation logs these numbers so the
collapse is visible, and the entry point warns when the trained model ends collapsed.

- mean pairwise cosine: 1.0 when every embedding points the same way;
- effective rank (Roy & Vetterli, 2007): exp of the entropy of the normalised singular values of the
  (L2-normalised) embedding matrix; 1.0 when every embedding lies on one direction;
- uniformity (Wang & Isola, 2020): log E exp(-2 ||x - y||^2) over pairs of L2-normalised embeddings;
  0 when collapsed, more negative when spread out.
"""

from __future__ import annotations

import math

import torch

# Collapsed: nearly every pair of texts points the same way AND the matrix is essentially rank one.
COLLAPSE_MEAN_COSINE = 0.98
COLLAPSE_EFFECTIVE_RANK = 1.5
# Training made held-out retrieval worse: the trained nDCG@10 is below this fraction of the untrained one.
WORSE_FRACTION = 0.5


def embedding_spread(emb: torch.Tensor) -> dict[str, float]:
    if not torch.isfinite(emb).all():  # a diverged model: NaN/inf embeddings are as useless as collapsed ones
        return {"mean_cosine": float("nan"), "effective_rank": float("nan"), "uniformity": float("nan"),
                "non_finite": 1.0}
    x = torch.nn.functional.normalize(emb.double(), dim=-1)
    n = x.shape[0]
    if n < 2:
        return {"mean_cosine": float("nan"), "effective_rank": float("nan"), "uniformity": float("nan")}
    gram = x @ x.T
    off = gram.sum() - gram.diagonal().sum()
    mean_cos = float(off / (n * (n - 1)))
    s = torch.linalg.svdvals(x)  # not centred: texts all on one direction have one singular value
    p = s / s.sum() if s.sum() > 0 else s
    p = p[p > 0]
    erank = float(torch.exp(-(p * p.log()).sum())) if p.numel() else 1.0
    sq = (2 - 2 * gram).clamp(min=0)
    mask = ~torch.eye(n, dtype=torch.bool)
    uniformity = float(torch.logsumexp(-2 * sq[mask], 0) - math.log(n * (n - 1)))
    return {"mean_cosine": mean_cos, "effective_rank": erank, "uniformity": uniformity}


def is_collapsed(spread: dict[str, float]) -> bool:
    return bool(spread.get("non_finite")) or (spread.get("mean_cosine", 0.0) >= COLLAPSE_MEAN_COSINE
            and spread.get("effective_rank", float("inf")) < COLLAPSE_EFFECTIVE_RANK)


def retrieval_got_worse(before: float | None, after: float | None) -> bool:
    """The trained held-out nDCG@10 (``after``) fell below ``WORSE_FRACTION`` of the untrained one."""
    return before is not None and after is not None and after < WORSE_FRACTION * before


def unusable_reasons(metrics: dict) -> list[str]:
    """Why a run's trained model is unusable, one phrase each (none: usable), from its ``metrics.json``:
    the embeddings collapsed, or training made held-out retrieval worse."""
    reasons = []
    if metrics.get("collapsed"):
        spread = metrics.get("embedding_spread") or {}
        reasons.append(f"embeddings collapsed (mean pairwise cosine {spread.get('mean_cosine', float('nan')):.4f}, "
                       f"effective rank {spread.get('effective_rank', float('nan')):.4f})")
    before = (metrics.get("initial_val") or {}).get("val/ndcg@10")
    after = (metrics.get("final_val") or {}).get("val/ndcg@10")
    if retrieval_got_worse(before, after):
        reasons.append(f"training made held-out retrieval worse (nDCG@10 {before:.4f} -> {after:.4f})")
    return reasons
