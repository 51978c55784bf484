"""Where a training curve stops moving: the step a realignment curve (CKA, k-NN between paired runs) plateaus.

A curve ``v`` recorded at steps ``s_0 < ... < s_T`` has its plateau from the first recorded step after which
every value stays within ``tol`` of the last one, ``v(s_T)``. The plateau is *reached* only when it holds for at
least ``min_fraction`` of the run (by steps): a curve that settles only at its last records is still moving, and
the report says so instead of naming a step. The last value is the reference because a realignment curve is read
for where it ends up; ``tol`` is in the metric's own units (CKA and k-NN Jaccard both lie in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plateau_step"]


def plateau_step(steps: Sequence[int], values: Sequence[float], tol: float, min_fraction: float = 0.25) -> dict:
    """``{"step", "reached", "first", "last", "tol"}`` for the curve ``values`` recorded at ``steps``.

    ``step``: the first recorded step from which every value is within ``tol`` of the last value (the last
    step itself when the curve is still moving). ``reached``: that span covers at least ``min_fraction`` of
    the recorded steps' range (and more than the last record)."""
    if len(steps) != len(values) or not steps:
        raise ValueError(f"plateau_step: {len(steps)} steps and {len(values)} values; need the same, non-zero number")
    if list(steps) != sorted(set(steps)):
        raise ValueError("plateau_step: steps must be strictly increasing")
    if not tol >= 0:
        raise ValueError(f"plateau_step: tol must be >= 0, got {tol}")
    last = float(values[-1])
    start = len(values) - 1
    while start > 0 and abs(float(values[start - 1]) - last) <= tol:
        start -= 1
    span = steps[-1] - steps[start]
    reached = start < len(values) - 1 and span >= min_fraction * (steps[-1] - steps[0])
    return {"step": int(steps[start]), "reached": bool(reached), "first": float(values[0]), "last": last,
            "tol": float(tol)}
