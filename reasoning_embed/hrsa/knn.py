"""k-nearest-neighbour overlap (geometry level), exact, chunked, deterministic.

For each row t, N_X(t) are the k nearest *other* rows of X (cosine similarity or Euclidean
distance), likewise N_Y(t); I_t = |N_X(t) ∩ N_Y(t)|, Jaccard J_t = I_t / (2k - I_t) and mutual
overlap I_t / k, averaged over rows, for several k at once.

Honesty rules (see docs/hrsa-metrics.md):

* a row is never its own neighbour: the diagonal is masked by *index*, never by distance, so an
  exact duplicate of row t is a legitimate (nearest) neighbour of t but t itself is not;
* ties are broken deterministically: neighbours are ordered by (similarity desc, row index asc),
  and N_k(t) is the first k of that order, so equal similarities never make the result depend
  on the top-k kernel;
* exact duplicates make near-ties whose order can flip between two models through rounding
  alone, so pass ``dedupe=True`` (or ``row_ids`` for bootstrap copies): rows sharing an id are
  collapsed to one row for the neighbour search and weighted by their multiplicity in the mean;
* ``0 < k < n`` (number of distinct rows) is enforced; chance level k/(n-1) is reported.

Memory: the n x n similarity matrix is never formed; rows are processed in chunks of
``chunk_size`` (``chunk_size x n`` float64 scores at a time) and only the n x k_max neighbour
indices are kept.

Invariances: cosine: rotation and isotropic scaling of either input; L2: also translation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ._tensor import as_f64, same_rows

__all__ = ["KNNResult", "knn_indices", "knn_jaccard", "dedupe_rows"]

_DEFAULT_CHUNK_ELEMS = 1 << 24      # 16M float64 scores = 128 MiB per chunk


def _prepare(X: torch.Tensor, metric: str):
    if metric == "cosine":
        nrm = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        return torch.where(nrm > 0, X / nrm.clamp_min(torch.finfo(X.dtype).tiny), torch.zeros_like(X)), None
    if metric == "l2":
        Z = X - X.mean(0, keepdim=True)          # translation-invariant anyway; centring helps numerics
        return Z, (Z * Z).sum(1)
    raise ValueError(f"metric must be 'cosine' or 'l2', got {metric!r}")


def _order_candidates(S: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k best columns per row of S, ordered by (score desc, column asc)."""
    # k + 1 (<= n, the masked diagonal is -inf) so boundary ties show without a pass over S:
    # more than k scores are >= the k-th best exactly when the (k+1)-th best equals it.
    vals, idx = torch.topk(S, k + 1, dim=1, largest=True, sorted=True)
    has_tie = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k], idx[:, :k]
    thr = vals[:, -1:]
    # Order the top-k set by (score desc, index asc): sort by index, then stably by score.
    o = torch.argsort(idx, dim=1)
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    o = torch.argsort(-vals, dim=1, stable=True)
    out = idx.gather(1, o)
    tie_rows = torch.nonzero(has_tie).flatten()
    if tie_rows.numel():
        # More candidates than k at the boundary value: the top-k kernel picked arbitrary ones.
        # Take them in (score desc, index asc) order instead, vectorised over the affected rows.
        St = S[tie_rows]
        r, c = torch.nonzero(St >= thr[tie_rows], as_tuple=True)   # row-major: c ascending per row
        v = St[r, c]
        o = torch.argsort(-v, stable=True)
        r, c = r[o], c[o]
        o = torch.argsort(r, stable=True)
        r, c = r[o], c[o]
        counts = torch.bincount(r, minlength=tie_rows.numel())
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(r.numel(), device=r.device) - starts[r]
        keep = pos < k
        out[tie_rows] = c[keep].view(-1, k)
    return out


def knn_indices(X, k: int, metric: str = "cosine", chunk_size: int | None = None) -> torch.Tensor:
    """Exact k nearest other rows of X: an n x k LongTensor ordered by (similarity desc, index asc).

    Row t never lists itself (masked by index), even when other rows duplicate it.
    Raises ``ValueError`` unless 0 < k < n.
    """
    X = as_f64(X, "X")
    n = X.shape[0]
    k = int(k)
    if not 0 < k < n:
        raise ValueError(f"k must satisfy 0 < k < n (n={n} rows), got k={k}")
    if not bool(torch.isfinite(X).all()):
        raise ValueError("X has non-finite values")
    Z, sq = _prepare(X, metric)
    cs = chunk_size or max(1, _DEFAULT_CHUNK_ELEMS // n)
    out = torch.empty(n, k, dtype=torch.long, device=X.device)
    for start in range(0, n, cs):
        stop = min(n, start + cs)
        S = Z[start:stop] @ Z.T                               # chunk x n
        if sq is not None:                                    # -||z_t - z_s||^2 + ||z_t||^2
            S.mul_(2.0).sub_(sq[None, :])
        rows = torch.arange(stop - start, device=X.device)
        S[rows, rows + start] = float("-inf")                 # never its own neighbour (by index)
        out[start:stop] = _order_candidates(S, k)
        del S                                                 # free before the next chunk's GEMM
    return out


def dedupe_rows(*arrays) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows that are exactly equal in *all* given arrays (same n) are duplicates.

    Returns ``(keep, inverse)``: ``keep`` are the indices of each distinct row's first occurrence
    (ascending), ``inverse[t]`` the position in ``keep`` of row t's representative.
    """
    mats = [as_f64(a, "array") for a in arrays]
    n = mats[0].shape[0]
    for m in mats:
        same_rows(mats[0], m)
    _, inv = torch.unique(torch.cat(mats, dim=1), dim=0, return_inverse=True)
    return _first_occurrence(inv, n)


def _first_occurrence(ids: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    _, inv = torch.unique(ids, return_inverse=True)
    n_u = int(inv.max()) + 1 if n else 0
    first = torch.full((n_u,), n, dtype=torch.long, device=inv.device)
    first.scatter_reduce_(0, inv, torch.arange(n, device=inv.device), reduce="amin")
    order = torch.argsort(first)                 # representatives in order of first appearance
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n_u, device=inv.device)
    return first[order], rank[inv]


@dataclass
class KNNResult:
    k: tuple[int, ...]
    jaccard: dict[int, float]           # mean_t I_t / (2k - I_t)
    mutual: dict[int, float]            # mean_t I_t / k
    chance_mutual: dict[int, float]     # k / (n_unique - 1)
    chance_jaccard: dict[int, float]    # c / (2 - c) with c = k / (n_unique - 1) (E[I] plugged in)
    per_row_jaccard: dict[int, torch.Tensor]   # J_t for every input row (copies share their value)
    n: int                              # input rows
    n_unique: int                       # rows after collapsing ids/duplicates (the neighbour pool)
    metric: str


def knn_jaccard(X, Y, k: int | Iterable[int] = (5, 10, 50), metric: str = "cosine",
                chunk_size: int | None = None, row_ids=None, dedupe: bool = False) -> KNNResult:
    """k-NN Jaccard and mutual overlap between X (n x dx) and Y (n x dy), same rows.

    ``row_ids``: optional id per row; rows with equal ids (e.g. bootstrap copies of one row) are
    one row for the neighbour search and count with their multiplicity in the means.
    ``dedupe=True`` derives such ids from rows that are exactly equal in both X and Y.
    """
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    ks = (int(k),) if isinstance(k, int) else tuple(sorted({int(v) for v in k}))
    if row_ids is not None and dedupe:
        raise ValueError("give row_ids or dedupe=True, not both")
    if dedupe:
        keep, inv = dedupe_rows(X, Y)
    elif row_ids is not None:
        ids = torch.as_tensor(row_ids.cpu() if isinstance(row_ids, torch.Tensor) else row_ids)
        if ids.shape != (n,):
            raise ValueError(f"row_ids must have one id per row ({n})")
        keep, inv = _first_occurrence(ids.to(X.device), n)
    else:
        keep, inv = None, None
    Xu, Yu = (X, Y) if keep is None else (X[keep], Y[keep])
    n_u = Xu.shape[0]
    for kk in ks:
        if not 0 < kk < n_u:
            raise ValueError(f"k must satisfy 0 < k < n (n={n_u} distinct rows), got k={kk}")
    kmax = ks[-1]
    nx = knn_indices(Xu, kmax, metric, chunk_size)
    ny = knn_indices(Yu, kmax, metric, chunk_size)
    jac, mut, cm, cj, per = {}, {}, {}, {}, {}
    for kk in ks:
        a, _ = torch.sort(nx[:, :kk], dim=1)
        b = ny[:, :kk].contiguous()
        pos = torch.searchsorted(a, b).clamp_max(kk - 1)
        inter = (a.gather(1, pos) == b).sum(1).to(torch.float64)
        Jt = inter / (2 * kk - inter)
        Mt = inter / kk
        if inv is not None:
            Jt, Mt = Jt[inv], Mt[inv]
        per[kk] = Jt
        jac[kk], mut[kk] = float(Jt.mean()), float(Mt.mean())
        c = kk / (n_u - 1)
        cm[kk], cj[kk] = c, c / (2 - c)
    return KNNResult(k=ks, jaccard=jac, mutual=mut, chance_mutual=cm, chance_jaccard=cj,
                     per_row_jaccard=per, n=n, n_unique=n_u, metric=metric)
