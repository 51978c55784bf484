"""Calibration of the report's statistics on simulated studies with a known truth (seeded, fast).

A study: ``n`` seeds, each a trained backbone/base pair; a per-seed effect (the seed variance the study is
about) plus task noise within the seed. The tests check that the difference test rejects at about alpha when
nothing differs, detects a planted difference at the power the report predicts, that TOST declares equivalence
of equal backbones with enough seeds (and not of backbones a margin apart), and that the hierarchical
bootstrap covers the true mean delta at about the nominal rate.
"""

import numpy as np
import pytest

from reasoning_embed.report.stats import (apply_holm, compare_seeds, hierarchical_bootstrap_ci, holm,
                                          min_attainable_p, power_difference, seeds_needed, sign_flip_p_value, tost)


def _studies(rng, n_studies, n_seeds, n_tasks, delta=0.0, seed_sd=1.0, task_sd=1.0):
    """(studies x seeds x tasks) task deltas: true delta + per-seed effect + task noise."""
    seed_eff = rng.normal(0, seed_sd, size=(n_studies, n_seeds, 1))
    return delta + seed_eff + rng.normal(0, task_sd, size=(n_studies, n_seeds, n_tasks))


def test_min_attainable_p_and_sign_flip_extremes():
    assert [min_attainable_p(n) for n in (2, 3, 4, 5, 6)] == [0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert sign_flip_p_value([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == pytest.approx(2 / 64)


def test_holm_matches_the_step_down_rule():
    # sorted p: 0.01 * 4, 0.02 * 3, 0.03 * 2, 0.04 * 1 -> 0.04, 0.06, 0.06 (monotone), 0.06
    assert holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])


def test_type_one_error_is_near_alpha_over_400_null_studies():
    rng = np.random.default_rng(0)
    D = _studies(rng, 400, 8, 10).mean(-1)                  # per-seed deltas, no true difference
    rejected = np.mean([sign_flip_p_value(d) < 0.05 for d in D])
    assert 0.02 <= rejected <= 0.09, rejected


def test_power_of_a_planted_difference_is_as_predicted():
    rng = np.random.default_rng(1)
    n, sd = 10, 1.0
    delta = 0.9                                             # predicted power about 0.7
    D = _studies(rng, 400, n, 20, delta=delta, seed_sd=sd, task_sd=0.5).mean(-1)
    true_sd = np.sqrt(sd ** 2 + 0.5 ** 2 / 20)
    predicted = power_difference(n, delta, true_sd, 0.05)
    observed = np.mean([sign_flip_p_value(d) < 0.05 for d in D])
    assert 0.5 < predicted < 0.9
    assert abs(observed - predicted) <= 0.08, (observed, predicted)


def test_tost_declares_equal_backbones_equivalent_with_enough_seeds():
    rng = np.random.default_rng(2)
    sd, margin = 0.5, 1.0
    n = seeds_needed(sd, margin)["equivalence"]             # seeds for power 0.8 at a true delta of 0
    assert n is not None and 4 <= n <= 12
    D = _studies(rng, 400, n, 10, seed_sd=sd, task_sd=0.1).mean(-1)
    declared = np.mean([tost(d, margin)["p"] < 0.05 for d in D])
    assert declared >= 0.75, declared
    # backbones exactly one margin apart are declared equivalent at most alpha of the time
    for edge in (margin, -margin):
        D = _studies(rng, 400, n, 10, delta=edge, seed_sd=sd, task_sd=0.1).mean(-1)
        assert np.mean([tost(d, margin)["p"] < 0.05 for d in D]) <= 0.07, edge


def test_hierarchical_bootstrap_covers_the_true_mean_delta():
    rng = np.random.default_rng(3)
    S = _studies(rng, 200, 12, 15, delta=0.3)
    covered = []
    for i, study in enumerate(S):
        lo, hi = hierarchical_bootstrap_ci(list(study), n_boot=1000, seed=i)
        covered.append(lo <= 0.3 <= hi)
    assert 0.89 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_four_verdicts():
    diff = compare_seeds({s: [2.0 + 0.1 * s, 2.1] for s in range(8)}, margin=0.5)
    equiv = compare_seeds({s: [0.01 * (-1) ** s, 0.0] for s in range(8)}, margin=0.5)
    unclear = compare_seeds({s: [v] for s, v in enumerate([1.5, -1.2, 0.3, -0.8, 2.0, -0.5, 0.9, -1.7])}, margin=0.5)
    few = compare_seeds({1: [0.2], 2: [0.9]}, margin=0.5)
    apply_holm([diff, equiv, unclear, few])
    assert [c.verdict for c in (diff, equiv, unclear, few)] == ["different", "equivalent", "inconclusive",
                                                                "underpowered"]


def test_hierarchical_bootstrap_with_ragged_task_counts_weights_seeds_equally():
    """A seed with 1 task and a seed with 4 count the same: replicates are means of per-seed means."""
    lo, hi = hierarchical_bootstrap_ci([[0.0, 0.0, 0.0, 0.0], [10.0]], n_boot=4000, alpha=0.02, seed=0)
    assert lo == 0.0 and hi == 10.0                    # padding never enters a replicate
    lo, hi = hierarchical_bootstrap_ci([[1.0, 3.0], [1.0, 3.0]], n_boot=4000, alpha=0.02, seed=0)
    assert 1.0 <= lo < 2.0 < hi <= 3.0


def test_seeds_needed_for_a_difference_reach_the_promised_power():
    """The table's 'seeds needed (diff)' for the observed spread: the smallest n whose predicted power is 0.8,
    and simulated studies with that many seeds and a true delta of one margin detect it about that often."""
    sd, margin = 1.0, 1.0
    n = seeds_needed(sd, margin)["difference"]
    assert power_difference(n, margin, sd) >= 0.8 > power_difference(n - 1, margin, sd)
    rng = np.random.default_rng(4)
    D = _studies(rng, 400, n, 10, delta=margin, seed_sd=sd, task_sd=0.1).mean(-1)
    assert np.mean([sign_flip_p_value(d) < 0.05 for d in D]) >= 0.74
    assert seeds_needed(0.1, 1.0)["difference"] == 6          # never fewer than the sign-flip test's minimum
