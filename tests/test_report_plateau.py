"""Where a realignment curve plateaus (report.plateau): known curves, invariances, and what is not a plateau."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reasoning_embed.report.plateau import plateau_step

STEPS = list(range(0, 121, 10))


def test_a_saturating_curve_plateaus_where_it_comes_within_tol_of_its_end():
    # v(t) = 1 - exp(-t / 20): |v(t) - v(120)| = exp(-t/20) - exp(-6) <= tol  <=>  t >= -20 ln(tol + exp(-6))
    values = [1 - math.exp(-t / 20) for t in STEPS]
    for tol in (0.2, 0.05, 0.01):
        t_star = -20 * math.log(tol + math.exp(-6))
        expected = min(s for s in STEPS if s >= t_star - 1e-9)
        got = plateau_step(STEPS, values, tol)
        assert got["step"] == expected and got["reached"]
        assert got["first"] == 0.0 and got["last"] == pytest.approx(values[-1])


def test_a_curve_still_moving_has_no_plateau():
    ramp = [0.5 + 0.004 * t for t in STEPS]            # +0.04 per record: never within 0.005 of the end
    got = plateau_step(STEPS, ramp, 0.005)
    assert got["step"] == 120 and not got["reached"]
    # settling only over the last 20 of 120 steps is less than a quarter of the run: still moving
    late = [0.5] * 10 + [0.9, 0.9, 0.9]
    got = plateau_step(STEPS, late, 0.005)
    assert got["step"] == 100 and not got["reached"]
    assert plateau_step(STEPS, late, 0.005, min_fraction=0.1)["reached"]


def test_a_dip_that_recovers_plateaus_after_the_dip():
    values = [0.9, 0.95, 0.99, 0.80, 0.987, 0.99, 0.99, 0.991, 0.99, 0.99, 0.99, 0.99, 0.99]
    got = plateau_step(STEPS, values, 0.005)
    assert got["step"] == 40 and got["reached"]       # step 20 is within tol, but the dip at 30 is not


def test_a_flat_curve_plateaus_at_its_first_step():
    got = plateau_step(STEPS, [1.0] * len(STEPS), 0.0)
    assert got["step"] == 0 and got["reached"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=20), st.floats(0.001, 0.2), st.floats(-5, 5),
       st.floats(0.1, 10))
def test_shift_and_scale_with_the_tolerance_leave_the_step(values, tol, shift, scale):
    steps = list(range(0, 10 * len(values), 10))
    ref = plateau_step(steps, values, tol)
    moved = plateau_step(steps, [scale * v + shift for v in values], scale * tol)
    # exact ties at the tolerance can round either way after the affine map: compare away from them
    margins = [abs(abs(v - values[-1]) - tol) for v in values]
    if min(margins) > 1e-9 * (1 + abs(shift) + scale):
        assert (moved["step"], moved["reached"]) == (ref["step"], ref["reached"])
    # every value from the plateau on is within tol of the end, the one before it is not
    i = steps.index(ref["step"])
    assert all(abs(v - values[-1]) <= tol for v in values[i:])
    assert i == 0 or abs(values[i - 1] - values[-1]) > tol


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same"):
        plateau_step([0, 10], [1.0], 0.01)
    with pytest.raises(ValueError, match="increasing"):
        plateau_step([0, 10, 10], [1.0, 1.0, 1.0], 0.01)
    with pytest.raises(ValueError, match="tol"):
        plateau_step([0, 10], [1.0, 1.0], float(np.nan))
