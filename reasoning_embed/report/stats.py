"""Seed-level statistics for "is backbone X different from, or equivalent to, its base?".

The unit of replication is the training seed: every task of one seed is scored on the same trained
model pair, so (seed, task) cells share that pair's randomness and are not independent samples. Each
comparison is therefore summarised by its per-seed deltas of Mean(Task) (the mean over the tasks both
runs evaluated of run - base), and

* :func:`sign_flip_p_value` — exact two-sided sign-flip (randomisation) test over the seeds, valid when
  a per-seed delta is as likely to be +d as -d under "no difference"; the smallest p it can give with
  n seeds is :func:`min_attainable_p` = 2 / 2^n (0.125 at 4 seeds; alpha = 0.05 needs 6 seeds);
* :func:`hierarchical_bootstrap_ci` — percentile interval of the mean delta, resampling seeds with
  replacement and then tasks with replacement within each drawn seed;
* :func:`tost` — two one-sided t-tests (Schuirmann) against an equivalence margin: "equivalent within
  +-margin" when the (1 - 2 alpha) t interval of the mean per-seed delta lies inside (-margin, +margin);
* :func:`holm` — Holm's step-down adjustment across the comparisons of one report;
* :func:`seeds_needed` — a normal-theory power calculation from the observed spread of per-seed deltas;
* :func:`compare_seeds` — all of the above and one of four verdicts (:data:`VERDICTS`).

"Not significantly different" is not "equivalent": with few seeds the honest verdict is often
"inconclusive" or "underpowered".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["VERDICTS", "SeedComparison", "compare_seeds", "hierarchical_bootstrap_ci", "holm", "min_attainable_p",
           "power_difference", "seeds_needed", "sign_flip_p_value", "tost", "apply_holm"]

VERDICTS = ("different", "equivalent", "inconclusive", "underpowered")


def min_attainable_p(n: int) -> float:
    """Smallest two-sided p of the exact sign-flip test with n non-zero deltas: 2 / 2^n (1 for n = 0)."""
    return min(1.0, 2.0 / 2 ** n) if n > 0 else 1.0


def sign_flip_p_value(deltas, n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided sign-flip test of mean delta = 0 over the given (per-seed) deltas.

    Exact (all 2^n sign patterns) up to n = 16, else ``n_perm`` random patterns with p = (1 + #) / (K + 1).
    """
    d = np.asarray(deltas, dtype=float)
    if d.size == 0:
        return 1.0
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)
    if d.size <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        null = np.abs(signs @ d) / d.size
        return float((null >= observed - tol).mean())
    rng = np.random.default_rng(seed)
    null = np.abs((rng.choice((1.0, -1.0), size=(n_perm, d.size)) * d).mean(axis=1))
    return float((1 + (null >= observed - tol).sum()) / (n_perm + 1))


def _padded(per_seed_tasks) -> tuple[np.ndarray, np.ndarray]:
    """Ragged per-seed task deltas as a (seeds x max_tasks) array (nan padded) and the task counts."""
    rows = [np.asarray(r, dtype=float) for r in per_seed_tasks]
    if not rows or any(r.size == 0 for r in rows):
        raise ValueError("every seed needs at least one task delta")
    counts = np.array([r.size for r in rows])
    out = np.full((len(rows), counts.max()), np.nan)
    for i, r in enumerate(rows):
        out[i, :r.size] = r
    return out, counts


def hierarchical_bootstrap_ci(per_seed_tasks, n_boot: int = 10000, alpha: float = 0.05,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of the per-seed mean task delta.

    ``per_seed_tasks``: one sequence of task deltas per seed. Each replicate draws as many seeds as there
    are, with replacement, then within every drawn seed as many tasks as it has, with replacement.
    With one seed only the tasks are resampled (the interval then ignores seed variance: say so).
    """
    D, counts = _padded(per_seed_tasks)
    S, T = D.shape
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for lo in range(0, n_boot, 2000):                       # chunks bound the memory at S * T * 2000 floats
        b = min(2000, n_boot - lo)
        s = rng.integers(0, S, size=(b, S))
        t = np.floor(rng.random((b, S, T)) * counts[s][..., None]).astype(int)
        vals = D[s[..., None], t]                          # b x S x T, the padded tail masked below
        mask = np.arange(T)[None, None, :] < counts[s][..., None]
        per_seed = np.where(mask, vals, 0.0).sum(-1) / counts[s]
        out[lo:lo + b] = per_seed.mean(-1)
    q = np.quantile(out, [alpha / 2, 1 - alpha / 2])
    return float(q[0]), float(q[1])


def tost(deltas, margin: float, alpha: float = 0.05) -> dict:
    """Two one-sided t-tests of |mean delta| < margin over the per-seed deltas (Schuirmann 1987).

    Returns ``p`` (max of the two one-sided p-values; nan when fewer than 2 seeds or zero spread with a
    mean outside the margin) and the (1 - 2 alpha) t interval ``ci90`` whose inclusion in
    (-margin, +margin) is the same decision.
    """
    from scipy import stats

    d = np.asarray(deltas, dtype=float)
    n = d.size
    if n < 2 or margin <= 0:
        return {"p": float("nan"), "ci": [float("nan"), float("nan")], "level": 1 - 2 * alpha}
    m, sd = float(d.mean()), float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    if se == 0:
        p = 0.0 if abs(m) < margin else 1.0
        return {"p": p, "ci": [m, m], "level": 1 - 2 * alpha}
    p_low = float(stats.t.sf((m + margin) / se, n - 1))    # H01: mu <= -margin
    p_high = float(stats.t.cdf((m - margin) / se, n - 1))  # H02: mu >= +margin
    h = float(stats.t.ppf(1 - alpha, n - 1)) * se
    return {"p": max(p_low, p_high), "ci": [m - h, m + h], "level": 1 - 2 * alpha}


def holm(p_values) -> list[float]:
    """Holm (1979) step-down adjusted p-values: reject H_i at level alpha iff adjusted p_i < alpha."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adj[i] = running
    return adj.tolist()


def power_difference(n: int, delta: float, sd: float, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t-test on n per-seed deltas when the true mean is ``delta``
    (noncentral t); 0 when the sign-flip test cannot reach alpha with n seeds."""
    from scipy import stats

    if n < 2 or min_attainable_p(n) > alpha:
        return 0.0
    if sd <= 0:
        return 1.0 if delta != 0 else alpha
    df, nc = n - 1, delta * math.sqrt(n) / sd
    c = stats.t.ppf(1 - alpha / 2, df)
    p = float(stats.nct.sf(c, df, nc) + stats.nct.cdf(-c, df, nc))
    if not math.isfinite(p):        # scipy's noncentral t gives nan far in the tail (nc ~ 25): power is ~1 there
        p = float(stats.norm.sf(c - abs(nc)) + stats.norm.cdf(-c - abs(nc)))
    return p


def seeds_needed(sd: float, margin: float, alpha: float = 0.05, power: float = 0.8, n_max: int = 1000) -> dict:
    """Seeds needed, for per-seed deltas with standard deviation ``sd``, to (a) detect a true difference of
    ``margin`` with the given power (two-sided test; never fewer than the sign-flip test's minimum) and
    (b) declare equivalence within +-margin with the given power when the true difference is 0 (TOST;
    n with (t_{1-alpha} + t_{1-(1-power)/2}) sd / sqrt(n) <= margin). None when ``sd`` is unknown."""
    from scipy import stats

    if not math.isfinite(sd) or margin <= 0:
        return {"difference": None, "equivalence": None}
    n_min = next(n for n in range(1, 64) if min_attainable_p(n) <= alpha)
    diff = next((n for n in range(max(2, n_min), n_max + 1) if power_difference(n, margin, sd, alpha) >= power),
                None)
    equiv = None
    for n in range(2, n_max + 1):
        df = n - 1
        if (stats.t.ppf(1 - alpha, df) + stats.t.ppf(1 - (1 - power) / 2, df)) * sd / math.sqrt(n) <= margin:
            equiv = n
            break
    return {"difference": diff, "equivalence": equiv}


@dataclass
class SeedComparison:
    n_seeds: int
    seeds: list
    per_seed_delta: list          # Mean(Task) of the run minus its base's, over the tasks both evaluated
    n_tasks: list                 # tasks per seed behind each per-seed delta
    mean_delta: float
    std_delta: float              # across seeds (nan with one seed)
    ci_low: float                 # hierarchical bootstrap (seeds, then tasks within seed), 1 - alpha
    ci_high: float
    p_sign_flip: float            # exact, over seeds, two-sided
    p_min: float                  # smallest p the sign-flip test can give with n_seeds: 2 / 2^n
    p_tost: float                 # equivalence within +-margin (nan: fewer than 2 seeds)
    tost_ci: list                 # (1 - 2 alpha) t interval of the mean delta
    margin: float
    alpha: float
    power_at_margin: float        # predicted power of the difference test for a true delta of +-margin
    seeds_needed: dict = field(default_factory=dict)
    p_holm: float = float("nan")          # filled by apply_holm over the comparisons of one report
    p_tost_holm: float = float("nan")
    verdict: str = ""
    verdict_text: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def compare_seeds(per_seed_tasks: dict, margin: float = 1.0, alpha: float = 0.05, n_boot: int = 10000,
                  seed: int = 0) -> SeedComparison:
    """One backbone-vs-base comparison from ``{seed: [task deltas]}``; the verdict is set by :func:`apply_holm`
    (alone: call ``apply_holm([cmp])``)."""
    if not per_seed_tasks:
        raise ValueError("no paired seeds")
    seeds = sorted(per_seed_tasks, key=str)
    rows = [np.asarray(per_seed_tasks[s], dtype=float) for s in seeds]
    d = np.array([r.mean() for r in rows])
    n = d.size
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    lo, hi = hierarchical_bootstrap_ci(rows, n_boot, alpha, seed)
    t = tost(d, margin, alpha)
    return SeedComparison(
        n_seeds=n, seeds=seeds, per_seed_delta=d.tolist(), n_tasks=[int(r.size) for r in rows],
        mean_delta=float(d.mean()), std_delta=sd, ci_low=lo, ci_high=hi, p_sign_flip=sign_flip_p_value(d),
        p_min=min_attainable_p(n), p_tost=t["p"], tost_ci=t["ci"], margin=margin, alpha=alpha,
        power_at_margin=power_difference(n, margin, sd, alpha) if n > 1 else 0.0,
        seeds_needed=seeds_needed(sd, margin, alpha) if n > 1 else {"difference": None, "equivalence": None})


def _verdict(c: SeedComparison) -> tuple[str, str]:
    if c.p_holm < c.alpha:
        side = "better" if c.mean_delta > 0 else "worse"
        return "different", f"different ({side} than base)"
    if math.isfinite(c.p_tost_holm) and c.p_tost_holm < c.alpha:
        return "equivalent", f"equivalent within ±{c.margin:g}"
    if c.p_min > c.alpha:
        return "underpowered", (f"underpowered: {c.n_seeds} seed(s) cannot reach p < {c.alpha:g} "
                                f"(smallest attainable p = {c.p_min:.3g})")
    return "inconclusive", "inconclusive (neither different nor shown equivalent)"


def apply_holm(comparisons: list[SeedComparison]) -> list[SeedComparison]:
    """Holm-adjust the difference and the equivalence p-values across ``comparisons`` (one family each) and
    set every verdict: *different* (adjusted sign-flip p < alpha), else *equivalent* (adjusted TOST p <
    alpha), else *underpowered* (the sign-flip test cannot reach alpha with these seeds), else
    *inconclusive*."""
    if not comparisons:
        return comparisons
    for c, p in zip(comparisons, holm([c.p_sign_flip for c in comparisons])):
        c.p_holm = p
    finite = [i for i, c in enumerate(comparisons) if math.isfinite(c.p_tost)]
    for i, p in zip(finite, holm([comparisons[i].p_tost for i in finite])):
        comparisons[i].p_tost_holm = p
    for c in comparisons:
        c.verdict, c.verdict_text = _verdict(c)
    return comparisons
