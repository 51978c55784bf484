"""Paired statistics for "is backbone X better than its base?" across seeds and tasks."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class PairedComparison:
    n: int
    mean_delta: float
    std_delta: float
    ci_low: float
    ci_high: float
    p_wilcoxon: float
    p_permutation: float
    verdict: str


def paired_bootstrap_ci(deltas, n_boot: int = 10000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile CI of the mean paired difference, resampling the pairs."""
    d = np.asarray(deltas, dtype=float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def sign_flip_p_value(deltas, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation test of mean delta = 0: flip the sign of each pair's difference.

    Exact (all 2^n sign patterns) up to n = 16, else ``n_perm`` random patterns with p = (1 + #) / (K + 1).
    """
    d = np.asarray(deltas, dtype=float)
    observed = abs(d.mean())
    if len(d) <= 16:
        signs = np.array(list(itertools.product((1, -1), repeat=len(d))))
        null = np.abs((signs * d).mean(axis=1))
        return float((null >= observed - 1e-12).mean())
    rng = np.random.default_rng(seed)
    null = np.abs((rng.choice((1, -1), size=(n_perm, len(d))) * d).mean(axis=1))
    return float((1 + (null >= observed - 1e-12).sum()) / (n_perm + 1))


def compare_paired(deltas, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> PairedComparison:
    from scipy.stats import wilcoxon

    d = np.asarray(deltas, dtype=float)
    if len(d) == 0:
        raise ValueError("no paired observations")
    lo, hi = paired_bootstrap_ci(d, n_boot, alpha, seed)
    p_w = float(wilcoxon(d).pvalue) if len(d) >= 2 and np.any(d != 0) else 1.0
    p_p = sign_flip_p_value(d, seed=seed)
    p = max(p_w, p_p)  # report significance only when both tests agree
    if p >= alpha:
        verdict = "no significant difference"
    else:
        verdict = "better than base" if d.mean() > 0 else "worse than base"
    std = float(d.std(ddof=1)) if len(d) > 1 else 0.0
    return PairedComparison(len(d), float(d.mean()), std, lo, hi, p_w, p_p, verdict)
