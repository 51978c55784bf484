"""Confidence intervals for linear CKA and k-NN overlap that cover, with no resampled copies.

Why not the bootstrap. Resampling texts with replacement duplicates rows, and duplicated rows raise both
indices: a copy adds a perfectly shared direction to CKA (for the debiased U-statistic copies act like the
diagonal terms it removes), and for k-NN the resample holds only ~63% distinct rows, so every neighbour
list is drawn from a smaller, sparser pool. Simulated with a known population value, percentile bootstrap
intervals covered 2-97% (biased CKA), 0-97% (debiased) and almost never for k-NN Jaccard, often not even
containing their own estimate. Both methods below only ever *remove* texts, so nothing is counted twice.

CKA: delete-a-block jackknife over texts (:func:`cka_jackknife`). Texts are split (seeded) into
``B = min(#texts, max_blocks)`` blocks; ``theta_b`` is the exact statistic without block b, ``theta_bar``
their mean, ``se = sqrt((B - 1) / B * sum_b (theta_b - theta_bar)^2)``, interval ``centre +- t_{B-1} se``.
CKA is a smooth function of covariances, for which the jackknife variance is consistent.

* Debiased CKA targets the population CKA (``||S_xy||^2 / (||S_xx|| ||S_yy||)`` of the covariances). As a
  ratio of unbiased estimators it keeps an O(1/n) bias, removed by the jackknife bias-corrected centre
  ``B * theta - (B - 1) * theta_bar`` (``estimate`` stays the plain value).
* Biased CKA has the same population value, but it is inflated by about d/n (0.27 against a population
  0.20 at n = 1000, d = 100); the jackknife bias correction leaves most of it (measured coverage of the
  population value 45-93%). Removing its bias exactly (each biased HSIC, a V-statistic, replaced by the
  unbiased U-statistic) gives debiased CKA, so the biased entry's ``population`` interval is the debiased
  one's. Its own ``[low, high]`` targets the expected biased CKA at this n, centred on the estimate: the
  band drawn around a plotted biased CKA, and the right interval for comparing biased CKA at equal n.

k-NN overlap (Jaccard and mutual): split-sample variance with an estimated rate (:func:`knn_interval`).
The target is ``E_n``, the expected overlap over independent samples of the same n from the same
population (estimated in the tests by the mean over many simulated datasets): the neighbour pool is the
sample, so the overlap has no sample-size-free value (it falls towards chance k/(n - 1) as n grows when
the representations differ locally). The jackknife is the wrong tool here: by the Efron-Stein inequality
its variance over-counts the interaction terms of a statistic, and k-NN overlap is mostly interactions
(whether row j is among row i's neighbours): measured SE 1.4-1.55x the true SD, coverage 0.97-1.00. The
variance instead is measured on disjoint, hence independent, parts of the sample: ``v2`` over halves and
``v4`` over quarters (``n_splits`` random partitions; whole texts stay in one part), and extrapolated one
halving further as ``v2 * r``, with the measured rate ``r = v2 / v4`` clipped to [1/4, 1] (1/2 for a
smooth statistic, 1/4 near chance, where overlap itself scales as 1/n). This is subsampling with an
estimated rate of convergence (Bertail, Politis and Romano, 1999). Interval: ``estimate +- z sqrt(v2 r)``.
Each part's neighbours are read off one search per model with enough candidates (exact).

Measured coverage (tests/test_hrsa_intervals.py, benchmarks/bench_report_stats.py): simulated X ~ N(0, I_d),
Y = X A + noise over several (n, d, noise) settings, within a few points of 95%. Cost: CKA one pass of
``n d_x d_y`` plus ``B`` small updates; k-NN one neighbour search per model with ``~4k + 9 sqrt(k)``
candidates and ``1.5 n_splits`` vectorised re-rankings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import as_f64, same_rows
from .cka import debias_hsic
from .knn import knn_indices

__all__ = ["Interval", "cka_jackknife", "jackknife_blocks", "knn_interval"]


@dataclass
class Interval:
    estimate: float          # the statistic on all rows
    low: float
    high: float
    centre: float            # the interval's centre (bias-corrected for CKA, = estimate for k-NN)
    se: float                # jackknife standard error
    alpha: float
    n_blocks: int            # jackknife blocks, or random partitions per part size (k-NN)
    method: str
    target: str = ""         # what [low, high] covers: "population" or "expected at this n"
    population: dict | None = None  # biased CKA: {low, high, centre} covering the population CKA (the debiased one's)

    def as_dict(self) -> dict:
        f = (lambda x: None if not math.isfinite(x) else float(x))  # noqa: E731 - JSON has no nan
        out = {"estimate": f(self.estimate), "low": f(self.low), "high": f(self.high), "centre": f(self.centre),
               "se": f(self.se), "alpha": self.alpha, "n_blocks": self.n_blocks, "method": self.method,
               "target": self.target}
        if self.population is not None:
            out["population"] = {key: f(v) for key, v in self.population.items()}
        return out


def _text_ids(groups, n: int) -> np.ndarray:
    """Each row's text as 0..G-1 (``groups``: one id per row; None = each row its own text)."""
    if groups is None:
        return np.arange(n)
    g = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one id per row ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1]


def jackknife_blocks(groups, n: int, max_blocks: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Row indices of each block: whole texts (``groups``: one id per row; None = each row its own text)
    assigned to ``min(#texts, max_blocks)`` blocks in a seeded random order."""
    ids = _text_ids(groups, n)
    G = int(ids.max()) + 1 if n else 0
    if G < 3:
        raise ValueError(f"the jackknife needs at least 3 texts, got {G}")
    B = min(G, max_blocks)
    block_of_text = np.random.default_rng(seed).permutation(G) % B
    block = block_of_text[ids]
    return [torch.from_numpy(np.flatnonzero(block == b)) for b in range(B)]


def _finish(estimate: float, reps: torch.Tensor, alpha: float, bias_correct: bool, method: str,
            target: str = "") -> Interval:
    from scipy import stats

    ok = reps[torch.isfinite(reps)].to(torch.float64)
    B = int(ok.numel())
    if B < 2 or not math.isfinite(estimate):
        nan = float("nan")
        return Interval(estimate, nan, nan, nan, nan, alpha, B, method, target)
    bar = float(ok.mean())
    se = math.sqrt((B - 1) / B * float(((ok - bar) ** 2).sum()))
    centre = B * estimate - (B - 1) * bar if bias_correct else estimate
    h = float(stats.t.ppf(1 - alpha / 2, B - 1)) * se
    return Interval(estimate, centre - h, centre + h, centre, se, alpha, B, method, target)


def _padded_blocks(blocks: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of every block padded to the largest block (B x s), and the mask of real entries."""
    s = max(b.numel() for b in blocks)
    idx = torch.zeros(len(blocks), s, dtype=torch.long, device=device)
    real = torch.zeros(len(blocks), s, dtype=torch.bool, device=device)
    for i, b in enumerate(blocks):
        idx[i, :b.numel()], real[i, :b.numel()] = b.to(device), True
    return idx, real


def _sq_norms(M: torch.Tensor) -> torch.Tensor:
    return (M * M).sum((-2, -1))


def _leave_block_out_sums(X, Y, blocks, budget: int = 1 << 24):
    """Per block: ||C||^2 terms of the cross- and self-covariances of the rows *not* in the block.

    The full uncentred sums minus the block's (one batched GEMM over the block's rows, chunked so that no
    more than ``budget`` floats of d x d matrices are alive), then re-centred with the kept rows' means.
    Returns (xy, xx, yy, N, m, p) with the first three per block and m, p the kept means (B x d).
    """
    n = X.shape[0]
    idx, real = _padded_blocks(blocks, X.device)
    w = real.to(X.dtype)[..., None]
    Xb, Yb = X[idx] * w, Y[idx] * w                          # B x s x d, padded rows are zero
    N = n - real.sum(1).to(X.dtype)
    m = (X.sum(0) - Xb.sum(1)) / N[:, None]
    p = (Y.sum(0) - Yb.sum(1)) / N[:, None]
    Sxy, Sxx, Syy = X.T @ Y, X.T @ X, Y.T @ Y
    dx, dy = X.shape[1], Y.shape[1]
    chunk = max(1, budget // max(dx * dy, dx * dx, dy * dy))
    out = torch.empty(3, len(blocks), dtype=X.dtype, device=X.device)
    for lo in range(0, len(blocks), chunk):
        sl = slice(lo, lo + chunk)
        Nc = N[sl][:, None, None]
        xs, ys, mc, pc = Xb[sl], Yb[sl], m[sl], p[sl]
        out[0, sl] = _sq_norms(Sxy - xs.transpose(1, 2) @ ys - Nc * mc[:, :, None] * pc[:, None, :])
        out[1, sl] = _sq_norms(Sxx - xs.transpose(1, 2) @ xs - Nc * mc[:, :, None] * mc[:, None, :])
        out[2, sl] = _sq_norms(Syy - ys.transpose(1, 2) @ ys - Nc * pc[:, :, None] * pc[:, None, :])
    return out[0], out[1], out[2], N, m, p


def _cka_from_sums(xy, xx, yy, N, a, b):
    """(biased, debiased) CKA per block: ``a``, ``b`` (n x B) squared norms of the re-centred rows, zero for
    the dropped rows (the debiased correction of the feature-space HSIC, as :func:`linear_cka`)."""
    biased = xy / torch.sqrt(xx * yy)
    sa, sb = a.sum(0), b.sum(0)
    xy_u = debias_hsic(xy, (a * b).sum(0), sa, sb, N)
    xx_u, yy_u = debias_hsic(xx, (a * a).sum(0), sa, sa, N), debias_hsic(yy, (b * b).sum(0), sb, sb, N)
    debiased = xy_u / torch.sqrt(xx_u * yy_u)
    debiased = torch.where(N > 3, debiased, torch.full_like(debiased, float("nan")))
    return biased, debiased


def cka_jackknife(X, Y, groups=None, alpha: float = 0.05, max_blocks: int = 100,
                  seed: int = 0) -> dict[str, Interval]:
    """Delete-a-block jackknife intervals of biased and debiased linear CKA (``{"biased", "debiased"}``; their
    targets differ, see the module docstring). Every replicate is the exact CKA without its block: the full
    uncentred sums minus the block's, so the cost is one ``n d_x d_y`` pass in all, vectorised over blocks."""
    from .cka import linear_cka

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    blocks = jackknife_blocks(groups, n, max_blocks, seed)
    X, Y = X - X.mean(0), Y - Y.mean(0)          # shift-invariant; keeps the uncentred sums well conditioned
    xy, xx, yy, N, m, p = _leave_block_out_sums(X, Y, blocks)
    kept = torch.ones(n, len(blocks), dtype=X.dtype, device=X.device)
    for i, b in enumerate(blocks):
        kept[b.to(X.device), i] = 0.0
    x2, y2 = (X * X).sum(1), (Y * Y).sum(1)
    a = (x2[:, None] - 2.0 * (X @ m.T) + (m * m).sum(1)[None, :]) * kept
    b = (y2[:, None] - 2.0 * (Y @ p.T) + (p * p).sum(1)[None, :]) * kept
    reps = torch.stack(_cka_from_sums(xy, xx, yy, N, a, b))
    est = (linear_cka(X, Y), linear_cka(X, Y, debiased=True) if n > 3 else float("nan"))
    deb = _finish(float(est[1]), reps[1], alpha, True, "jackknife (texts), bias-corrected: population CKA",
                  "population")
    biased = _finish(float(est[0]), reps[0], alpha, False,
                     "jackknife (texts), centred on the estimate: expected biased CKA at this n", "expected at this n")
    # Its population value is the population CKA; removing the bias of biased CKA exactly (each biased HSIC, a
    # V-statistic, replaced by its unbiased U-statistic) *is* debiased CKA, so that is its population interval.
    biased.population = {"low": deb.low, "high": deb.high, "centre": deb.centre}
    return {"biased": biased, "debiased": deb}


def _overlaps(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[float, float]:
    """Mean Jaccard and mean mutual overlap of two n x k neighbour lists (same labels)."""
    inter = _row_overlaps(a, b, k)
    return float((inter / (2 * k - inter)).mean()), float((inter / k).mean())


def _row_overlaps(a: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """|N_a(t) ∩ N_b(t)| per row of two (..., k) neighbour lists, by sort + binary search (no k x k table)."""
    a = torch.sort(a, dim=-1).values.contiguous()
    b = b.contiguous()
    pos = torch.searchsorted(a, b).clamp_max(k - 1)
    return (a.gather(-1, pos) == b).sum(-1).to(torch.float64)


def _first_k_same_part(lists: torch.Tensor, lab: torch.Tensor, k: int) -> torch.Tensor | None:
    """For a batch of partitions (``lab``: R x n part of every row), each row's first k candidates in its own
    part (R x n x k), or None when some row's candidate list runs short."""
    valid = lab.gather(1, lists.flatten()[None, :].expand(lab.shape[0], -1)).view(lab.shape[0], *lists.shape)
    valid = valid == lab[:, :, None]
    sel = valid & (torch.cumsum(valid.to(torch.int32), -1) <= k)
    if not bool((sel.sum(-1) == k).all()):
        return None
    return lists.expand(lab.shape[0], -1, -1)[sel].view(lab.shape[0], lists.shape[0], k)


def _part_labels(groups, n: int, parts: int, n_splits: int, rng: np.random.Generator) -> torch.Tensor:
    """``n_splits`` random partitions of the rows into ``parts`` parts of (nearly) equal text count, whole texts
    together: an n_splits x n tensor of part ids."""
    ids = _text_ids(groups, n)
    G = int(ids.max()) + 1
    return torch.from_numpy(np.stack([(rng.permutation(G) % parts)[ids] for _ in range(n_splits)]))


def _split_variance(X, Y, lx, ly, groups, k: int, metric: str, parts: int, n_splits: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Var of (Jaccard, mutual) over samples of ``n / parts`` rows: per random partition into ``parts`` disjoint
    (hence independent) parts, the sample variance of the parts' values; averaged over ``n_splits`` partitions.

    Each part's neighbour lists are the first k candidates of the full ordered lists that lie in the part
    (exact: removing rows only removes candidates), vectorised over partitions; a fresh search per part where
    the lists run short."""
    n = X.shape[0]
    labels = _part_labels(groups, n, parts, n_splits, rng).to(X.device)
    chunk = max(1, (1 << 24) // (n * lx.shape[1]))
    out = np.zeros(2)
    for lo in range(0, n_splits, chunk):
        lab = labels[lo:lo + chunk]
        a, b = _first_k_same_part(lx, lab, k), _first_k_same_part(ly, lab, k)
        if a is None or b is None:                          # rare: search each part afresh
            inter = torch.empty(lab.shape, dtype=torch.float64, device=X.device)
            for r in range(lab.shape[0]):
                for p in range(parts):
                    rows = torch.nonzero(lab[r] == p).flatten()
                    inter[r, rows] = _row_overlaps(knn_indices(X[rows], k, metric), knn_indices(Y[rows], k, metric), k)
        else:
            inter = _row_overlaps(a, b, k)                  # R x n
        count = torch.zeros(lab.shape[0], parts, dtype=torch.float64, device=X.device).scatter_add_(
            1, lab, torch.ones_like(inter))
        for i, per_row in enumerate((inter / (2 * k - inter), inter / k)):
            means = torch.zeros_like(count).scatter_add_(1, lab, per_row) / count
            out[i] += float(means.var(1, unbiased=True).sum())
    return out / n_splits


def knn_interval(X, Y, groups=None, k: int = 10, metric: str = "cosine", alpha: float = 0.05,
                 n_splits: int = 100, seed: int = 0) -> dict[str, Interval]:
    """Intervals of the k-NN Jaccard and mutual overlap (``{"jaccard", "mutual"}``; rows distinct: deduplicate
    first) for their expected value at this n, by split-sample variance with an estimated rate.

    ``v2`` and ``v4`` are the variances of the statistic on n/2 and n/4 rows, each measured without bias on
    disjoint (independent) parts of random partitions (``n_splits`` halvings, ``n_splits / 2`` quarterings, whole
    texts kept together); the variance at n is extrapolated one halving further, ``v2 * r`` with the measured
    ratio ``r = v2 / v4`` clipped to [1/4, 1] (between the 1/n rate of a smooth statistic and the 1/n^2 of
    overlap near chance). Interval: ``estimate +- z_{1 - alpha/2} sqrt(v2 r)``. Every part's neighbour lists are
    read off one search per model with enough candidates (exact; a fresh search where they run short).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    from scipy import stats

    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    n_texts = int(_text_ids(groups, n).max()) + 1 if n else 0
    if n_texts < 8 or not 0 < k < n // 4 - 1:
        raise ValueError(f"the k-NN interval needs at least 8 texts and 0 < k < n/4 - 1 (quarters of the sample "
                         f"search their own neighbours): n={n}, {n_texts} texts, k={k}")
    top = min(n - 1, int(4 * k + 8 * math.sqrt(12 * k)) + 8)
    lx, ly = knn_indices(X, top, metric), knn_indices(Y, top, metric)
    est = _overlaps(lx[:, :k], ly[:, :k], k)
    rng = np.random.default_rng(seed)
    top2 = min(top, int(2 * k + 8 * math.sqrt(2 * k)) + 8)         # enough candidates for halves
    v2 = _split_variance(X, Y, lx[:, :top2], ly[:, :top2], groups, k, metric, 2, n_splits, rng)
    v4 = _split_variance(X, Y, lx, ly, groups, k, metric, 4, max(1, n_splits // 2), rng)
    ratio = np.clip(np.divide(v2, v4, out=np.ones(2), where=v4 > 0), 0.25, 1.0)
    se = np.sqrt(v2 * ratio)
    z = float(stats.norm.ppf(1 - alpha / 2))
    method = ("split-sample variance, rate estimated from n/2 and n/4 (texts kept whole), centred on the estimate: "
              "expected overlap at this n")
    return {name: Interval(e, e - z * s, e + z * s, e, float(s), alpha, n_splits, method, "expected at this n")
            for name, e, s in (("jaccard", est[0], se[0]), ("mutual", est[1], se[1]))}
