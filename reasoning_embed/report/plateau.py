"""Where a training curve stops moving: the step a realignment curve (CKA, k-NN between paired runs) plateaus.

A curve ``v`` recorded at steps ``s_0 < ... < s_T`` has its plateau from the first recorded step after which
every value stays within ``tol`` of the last one, ``v(s_T)``. The plateau is *reached* only when it holds for at
least ``min_fraction`` of the run (by steps): a curve that settles only at its last records is still moving, and
the report says so instead of naming a step. The last value is the reference because a realignment curve is read
for where it ends up; ``tol`` is in the metric's own units (CKA and k-NN Jaccard both lie in [0, 1]).

Over a sweep, :func:`realignment_groups` summarises the pairs of each (backbone A, backbone B, finetune) over seeds
(median plateau step, range, seeds that reached one), and :func:`render_realignment_markdown` is its report section.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_TOL", "plateau_step", "realignment_groups", "render_realignment_markdown"]

DEFAULT_TOL = {"cka": 0.005, "knn": 0.02}  # conf/report.yaml plateau_tol: CKA settles tighter than k-NN overlap


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


def realignment_groups(pairs: list[dict]) -> list[dict]:
    """The sweep's pairs grouped by (backbone A, backbone B, finetune) over seeds: for CKA and k-NN, the mean
    first and last value and the plateau steps (median, range, how many seeds reached one)."""
    groups: dict[tuple, list[dict]] = {}
    for p in pairs:
        if "plateau" in p:
            groups.setdefault((p["backbone_a"], p["backbone_b"], p["finetune"]), []).append(p)
    out = []
    for (a, b, finetune), ps in sorted(groups.items()):
        entry = {"backbone_a": a, "backbone_b": b, "finetune": finetune, "seeds": sorted(p["seed"] for p in ps),
                 "metrics": {}}
        for metric in ps[0]["plateau"]:
            pl = [p["plateau"][metric] for p in ps]
            steps = [x["step"] for x in pl if x["reached"]]
            entry["metrics"][metric] = {
                "first": float(np.mean([x["first"] for x in pl])), "last": float(np.mean([x["last"] for x in pl])),
                "tol": pl[0]["tol"], "reached": len(steps), "n": len(pl),
                "median_step": float(np.median(steps)) if steps else None,
                "min_step": min(steps) if steps else None, "max_step": max(steps) if steps else None,
                "last_step": int(ps[0]["last"]["step"])}
        out.append(entry)
    return out


def render_realignment_markdown(groups: list[dict]) -> str:
    if not groups:
        return ""
    lines = ["", "## Realignment between paired runs (same seed, same step; mean over seeds)", "",
             "Plateau: the first recorded step after which the curve stays within the tolerance of its last value, "
             "counted as reached when that lasts at least a quarter of the run (`report.plateau`).", "",
             "| A | B | finetune | seeds | metric | at the first step | at the last step | plateau from step "
             "(median [range]) | seeds with a plateau | tolerance |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        for metric, m in g["metrics"].items():
            where = (f"{m['median_step']:g} [{m['min_step']}, {m['max_step']}]" if m["reached"]
                     else f"not reached by step {m['last_step']}")
            lines.append(f"| {g['backbone_a']} | {g['backbone_b']} | {g['finetune']} | {len(g['seeds'])} | {metric} | "
                         f"{m['first']:.3f} | {m['last']:.3f} | {where} | {m['reached']} of {m['n']} | "
                         f"±{m['tol']:g} |")
    return "\n".join(lines) + "\n"
