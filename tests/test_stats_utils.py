"""The one Wilson interval (scipy's binomtest) agrees with the textbook formula and behaves at the edges; the one
number formatter prints a missing value as n/a."""

import math

import pytest

from reasoning_embed.utils.stats import wilson_interval


def _textbook(k, n, z=1.959963984540054):
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (3, 10), (50, 100), (99, 100), (7, 1000), (500, 1000)])
def test_agrees_with_the_formula(k, n):
    lo, hi = wilson_interval(k, n)
    want_lo, want_hi = _textbook(k, n)
    assert lo == pytest.approx(max(0.0, want_lo), abs=1e-12) and hi == pytest.approx(min(1.0, want_hi), abs=1e-12)


def test_edges_and_confidence():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    narrow, wide = wilson_interval(30, 60, 0.8), wilson_interval(30, 60, 0.99)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_a_missing_or_non_finite_number_prints_as_n_a_in_every_table():
    from reasoning_embed.utils.fmt import fmt_number

    assert [fmt_number(x) for x in (None, float("nan"), float("inf"), -float("inf"))] == ["n/a"] * 4
    assert fmt_number(0.12345) == "0.123" and fmt_number(0.000123, ".3g") == "0.000123"
    assert fmt_number(41.96, ".2f") == "41.96" and fmt_number(3, ".2f") == "3.00"
