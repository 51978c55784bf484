"""Inverse row entropy of an alignment matrix: is the coordinate basis kept?

For an orthogonal O, each row's squared entries P_ij = O_ij^2 sum to 1. With
H_i = -sum_j P_ij log P_ij / log d, the score 1 - mean_i H_i is 1 for a signed permutation (each
old axis maps onto one new axis) and about (2 - gamma - ln 2)/ln d for a Haar-random rotation
(0.099 at d = 1536, 0.088 at d = 4096).

Invariances: unchanged by signed permutations of O's rows or columns (O -> P1 O P2); depends on
the basis, on purpose.
"""

from __future__ import annotations

import math

import torch

from ._tensor import as_f64

__all__ = ["inverse_row_entropy", "random_rotation_entropy_baseline"]

_EULER_GAMMA = 0.5772156649015329


def inverse_row_entropy(O) -> float:
    """1 - mean row entropy of P = O**2 (rows renormalised to sum 1), entropies in units of log d.

    ``O`` is d x d' (d' = number of columns, the log base); rows that are all zero are skipped.
    Requires d' >= 2.
    """
    O = as_f64(O, "O")
    d = O.shape[1]
    if d < 2:
        raise ValueError("inverse row entropy needs at least 2 columns")
    P = O * O
    rs = P.sum(1, keepdim=True)
    keep = rs.squeeze(1) > 0
    P = P[keep] / rs[keep]
    H = -torch.special.xlogy(P, P).sum(1) / math.log(d)
    return float(1.0 - H.mean())


def random_rotation_entropy_baseline(d: int, exact: bool = False) -> float:
    """Expected inverse row entropy of a Haar-random d x d rotation.

    Default: the large-d formula (2 - gamma - ln 2)/ln d used by the paper. ``exact=True``: the
    finite-d value 1 - (psi(d/2 + 1) - psi(3/2))/ln d, since each P_ij ~ Beta(1/2, (d-1)/2) and
    E[-P ln P] = (psi(d/2 + 1) - psi(3/2))/d. (The two differ by about 1/(d ln d).)
    """
    if d < 2:
        raise ValueError("d must be >= 2")
    if exact:
        psi = lambda z: float(torch.special.digamma(torch.tensor(z, dtype=torch.float64)))  # noqa: E731
        return 1.0 - (psi(d / 2 + 1) - psi(1.5)) / math.log(d)
    return (2.0 - _EULER_GAMMA - math.log(2.0)) / math.log(d)
