"""Massive activations: detection and preprocessing.

LLM hidden states have a few dimensions where a few tokens (attention sinks, BOS, delimiters)
take values thousands of times the typical magnitude; base and RL-tuned models share them, and
they dominate CKA (1% of rows sharing one huge dimension lifts CKA of otherwise independent
data from 0.09 to 0.9999). Detect and report them; then exclude the rows, z-score the columns or
clamp quantiles before comparing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import as_f64

__all__ = ["MassiveActivationReport", "massive_activation_dims", "zscore_columns", "clamp_quantile"]


@dataclass
class MassiveActivationReport:
    dims: torch.Tensor          # flagged dimensions (ascending)
    max_abs: torch.Tensor       # max |x| in each flagged dimension
    ratio: torch.Tensor         # max |x| / median |x| (global median over all entries)
    row_fraction: torch.Tensor  # fraction of rows whose |x| in that dim exceeds ratio * median
    median_abs: float           # global median |x|
    rows: torch.Tensor          # rows holding at least one massive entry (candidate sink tokens)


def massive_activation_dims(X, ratio: float = 100.0) -> MassiveActivationReport:
    """Dimensions where max |x| exceeds ``ratio`` times the median |x| over *all* entries.

    The global median is the reference (as in Sun et al., 2024, "Massive activations in LLMs"),
    so a dimension that is large for most tokens is flagged too. ``rows`` lists the rows with a
    massive entry, to inspect or exclude (``X[~mask]``).
    """
    X = as_f64(X, "X")
    A = X.abs()
    med = float(np.median(A.cpu().numpy()))
    thr = ratio * med
    big = A > thr
    mx = A.max(0).values
    dims = torch.nonzero(big.any(0)).flatten()
    return MassiveActivationReport(
        dims=dims, max_abs=mx[dims], ratio=mx[dims] / med if med > 0 else torch.full_like(mx[dims], float("inf")),
        row_fraction=big[:, dims].to(torch.float64).mean(0), median_abs=med,
        rows=torch.nonzero(big.any(1)).flatten())


def zscore_columns(X, eps: float = 1e-12) -> torch.Tensor:
    """(X - column mean) / column std (float64); columns with std <= eps are left at 0."""
    X = as_f64(X, "X")
    Xc = X - X.mean(0, keepdim=True)
    sd = Xc.std(0, unbiased=False, keepdim=True)
    return torch.where(sd > eps, Xc / sd.clamp_min(eps), torch.zeros_like(Xc))


def clamp_quantile(X, q: float = 0.999, per_column: bool = False) -> torch.Tensor:
    """Clamp entries to [-c, c] with c the q-quantile of |x| (float64).

    Default: one threshold over all entries, which catches a few huge entries in one dimension
    (a per-column threshold would not, once the huge values exceed 1 - q of that column's rows).
    ``per_column=True``: a threshold per column instead.
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"q must be in (0, 1], got {q}")
    X = as_f64(X, "X")
    A = X.abs().cpu().numpy()
    c = np.quantile(A, q, axis=0 if per_column else None)
    c = torch.as_tensor(c, dtype=torch.float64, device=X.device)
    return torch.maximum(torch.minimum(X, c), -c)
