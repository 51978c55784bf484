"""The one way a table or a log line prints a number that may be missing."""

from __future__ import annotations

import math


def fmt_number(x, spec: str = ".3f") -> str:
    """``x`` formatted with ``spec``; ``n/a`` when it is missing (None) or not finite (NaN, inf)."""
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)
