"""Dimension-wise correlation (representation level): is coordinate k the same in both models?

r_k = Pearson correlation between column k of X and column k of Y; the score is the mean over
columns with non-negligible variance in both inputs. Deliberately *not* rotation-invariant: it
detects drift of the coordinate basis (about 0 for X against X Q). Invariant to per-column
positive affine maps (r(X, a X + b) = sign(a) per column).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._tensor import as_f64, same_rows

__all__ = ["DimCorrResult", "dimension_wise_correlation"]


@dataclass
class DimCorrResult:
    r: torch.Tensor            # per-column Pearson r (nan for excluded columns)
    mean: float                # mean r over valid columns (nan if none)
    n_valid: int
    n_excluded: int            # columns with ~zero variance in X or Y, reported, not averaged
    excluded: torch.Tensor     # their indices


def dimension_wise_correlation(X, Y, eps: float = 1e-10) -> DimCorrResult:
    """Per-column Pearson r between X and Y (both n x d, same rows and columns).

    A column is excluded when its standard deviation in X (or Y) is <= ``eps`` times the
    largest column standard deviation of that matrix (or exactly 0); excluded columns are
    counted and listed.
    """
    X, Y = as_f64(X, "X"), as_f64(Y, "Y")
    n = same_rows(X, Y)
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"dimension-wise correlation needs equal widths, got {X.shape[1]} and {Y.shape[1]}")
    if n < 2:
        raise ValueError("need at least 2 rows")
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    sx, sy = torch.linalg.vector_norm(Xc, dim=0), torch.linalg.vector_norm(Yc, dim=0)
    ok = (sx > eps * sx.max()) & (sy > eps * sy.max()) & (sx > 0) & (sy > 0)
    r = torch.full((X.shape[1],), float("nan"), dtype=torch.float64, device=X.device)
    r[ok] = ((Xc[:, ok] * Yc[:, ok]).sum(0) / (sx[ok] * sy[ok])).clamp(-1.0, 1.0)
    n_valid = int(ok.sum())
    excluded = torch.nonzero(~ok).flatten()
    return DimCorrResult(r=r, mean=float(r[ok].mean()) if n_valid else float("nan"), n_valid=n_valid,
                         n_excluded=int(excluded.numel()), excluded=excluded)
