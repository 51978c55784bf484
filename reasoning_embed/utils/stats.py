"""Small statistics shared by the layers above (the foundry's held-out accuracy, HRSA's probe accuracy)."""

from __future__ import annotations


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion of ``k`` successes in ``n`` trials (scipy's ``binomtest``);
    ``(0, 1)`` when there are no trials."""
    from scipy.stats import binomtest

    if n <= 0:
        return (0.0, 1.0)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))
