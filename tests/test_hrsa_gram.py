"""HRSA at scale, kernel (Gram) route: the L x L CKA, its jackknife intervals and its permutation null computed
in layer blocks and row panels within a memory budget equal the in-memory computations (CKAAccumulator,
cka_jackknife, cka_permutation_test, cka_layers_calibrated) for every blocking, and the float32 tiles stay
accurate with massive activations."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

from reasoning_embed.hrsa import linear_cka
from reasoning_embed.hrsa.cka_blocked import cka_matrix_blocked
from reasoning_embed.hrsa.cka_gram import (GramPlan, choose_plan, cka_gram_blocked, cka_null_blocked, plan_gram,
                                           plan_null)
from reasoning_embed.hrsa.intervals import cka_jackknife
from reasoning_embed.hrsa.stats import cka_permutation_test

from test_hrsa_scale import fake_models, massive_inputs, rel, todays_engine

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda msg: None}
F64 = torch.float64


def _groups(n, size=3):
    return torch.arange(n) // size


def test_gram_route_equals_todays_engine_for_every_blocking():
    Xs, Ys = fake_models(n=61)
    ref_b, ref_d = todays_engine(Xs, Ys)
    for ba, bb, T, held in itertools.product((1, 2, 4), (1, 3), (1, 2, 5, 61), (False, True)):
        plan = plan_gram(4, 3, 6, 9, 61, None, F64, panels=T, block_a=ba, block_b=bb, resident=held)
        res = cka_matrix_blocked(Xs, Ys, compute_dtype=F64, plan=plan, **QUIET)
        assert rel(res.compute(False), ref_b) < 1e-10, (ba, bb, T, held)
        assert rel(res.compute(True), ref_d) < 1e-10, (ba, bb, T, held)
    assert float(ref_d.min()) < 0.9


def test_jackknife_of_every_layer_pair_equals_cka_jackknife_for_every_blocking():
    Xs, Ys = fake_models(n=45, La=3, Lb=2)
    g = _groups(45)
    ref = {(i, j): cka_jackknife(Xs[i], Ys[j], g, max_blocks=6, seed=2) for i in range(3) for j in range(2)}
    for ba, bb, T, held in itertools.product((1, 3), (1, 2), (1, 2, 7, 45), (False, True)):
        plan = plan_gram(3, 2, 6, 9, 45, None, F64, panels=T, block_a=ba, block_b=bb, jackknife_blocks=6,
                         resident=held)
        res = cka_matrix_blocked(Xs, Ys, compute_dtype=F64, plan=plan, jackknife=True, groups=g, max_blocks=6,
                                 seed=2, **QUIET)
        for (i, j), iv in ref.items():
            for name in ("biased", "debiased"):
                for f in ("estimate", "low", "high", "centre", "se"):
                    got, want = float(res.jackknife[name][f][i, j]), getattr(iv[name], f)
                    assert abs(got - want) <= 1e-10 * abs(want), (ba, bb, T, held, name, f)
    assert res.jackknife["debiased"]["n_blocks"] == 6


def test_permutation_null_of_every_layer_pair_equals_the_in_memory_nulls():
    from reasoning_embed.hrsa.calibration import cka_layers_calibrated

    Xs, Ys = fake_models(n=48, La=3, Lb=2)
    g = _groups(48, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for deb in (False, True):
            ref = {(i, j): cka_permutation_test(Xs[i], Ys[j], g, n_perm=9, seed=5, debiased=deb)
                   for i in range(3) for j in range(2)}
            for ba, bb in itertools.product((1, 2, 3), (1, 2)):
                obs, null, _ = cka_null_blocked(Xs, Ys, g, n_perm=9, seed=5, debiased=deb,
                                                plan=plan_null(3, 2, 6, 9, 48, 9, block_a=ba, block_b=bb), **QUIET)
                for (i, j), p in ref.items():
                    assert rel(null[:, i, j], p.null) < 1e-10 and abs(obs[i, j] - p.observed) < 1e-10 * p.observed
        cal, S = cka_layers_calibrated(list(Xs), list(Ys), g, agg="max", n_perm=9, seed=5)
        obs, null, plan = cka_null_blocked(Xs, Ys, g, n_perm=9, seed=5, memory_budget="100KB", **QUIET)
    assert len(plan.blocks_a) * len(plan.blocks_b) > 1                          # the budget forced blocks
    assert rel(obs, S) < 1e-10
    from reasoning_embed.hrsa.calibration import calibrate_null

    mine = calibrate_null(float(obs.max()), null.amax((1, 2)), 0.05)
    assert mine.tau == pytest.approx(cal.tau, rel=1e-10) and mine.p_value == cal.p_value


def test_plans_fit_the_budget_and_the_gram_route_is_chosen_where_it_is_cheaper():
    La, d = 29, 1536
    for gb in (1, 2, 4, 8):
        plan = plan_gram(La, La, d, d, 5000, f"{gb}GB", torch.float32, storage_bytes=2, gflops=30)
        assert plan.state_bytes <= gb * 1e9
        assert plan.resident == (gb >= 2)              # every panel held once it fits: one read of the cache
        assert sorted(sum(plan.blocks_a, [])) == list(range(La))
        assert plan.panels[0][0] == 0 and plan.panels[-1][1] == 5000
        assert "passes over the features" in plan.describe() and "estimated" in plan.describe()
    assert isinstance(choose_plan(La, La, d, d, 5000, "4GB", gflops=30), GramPlan)        # n << L d: kernel space
    assert not isinstance(choose_plan(La, La, 64, 64, 200000, "4GB", gflops=30), GramPlan)  # n >> L d: features
    with pytest.raises(ValueError, match="too small"):
        plan_gram(La, La, d, d, 5000, "500KB")
    with pytest.raises(ValueError, match="too small"):
        plan_null(La, La, d, d, 5000, 100, "100MB")
    assert plan_null(La, La, d, d, 2048, 200, "2GB").state_bytes <= 2e9


def test_gram_route_float32_error_is_bounded_with_massive_activations():
    Xs, Ys = (v.float().double() for v in massive_inputs(n=600))                        # what float32 states hold
    exact = [torch.tensor([[linear_cka(x, y, deb) for y in Ys] for x in Xs], dtype=F64) for deb in (False, True)]
    fast = cka_gram_blocked(Xs.float(), Ys.float(), memory_budget="3MB", **QUIET)           # the default: float32
    assert fast.plan.compute_dtype == torch.float32 and len(fast.plan.panels) > 1
    for deb in (False, True):
        assert rel(fast.compute(deb), exact[deb]) < 1e-6
    assert 0.05 < float(exact[0].min()) < 0.99


@pytest.fixture(scope="module")
def enc(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    return build_encoder({"path": str(micro_backbone), "name": "micro"}, attention="causal")


def test_extraction_jackknife_of_the_cka_matrix_reads_the_cache_and_equals_cka_jackknife(enc, corpus_dir, tmp_path):
    """Every layer pair's interval on all rows, computed in blocks from the feature cache within a budget, equals
    cka_jackknife on the same rows (the sample holds every row here), texts as the jackknife's units."""
    from reasoning_embed.hrsa.features import extract_features
    from reasoning_embed.hrsa.texts import load_texts

    texts = load_texts("builtin", corpus_dir=corpus_dir, n_texts=12, seed=0).texts
    ext = extract_features(enc, enc, texts, max_length=16, batch_size=5, progress=False, cache_dir=tmp_path,
                           cka_compute_dtype=F64, cka_jackknife=True, memory_budget="60KB", max_sample=10 ** 6,
                           dedupe_sample=False)
    plan = ext.cka.plan
    assert isinstance(plan, GramPlan) and len(plan.panels) * len(plan.blocks_a) > 2 and "Gram route" in ext.cache["plan"]
    assert ext.counts["sample_rows"] == ext.counts["rows_streamed"]
    jk = ext.cka.jackknife
    for i, j in ((0, 0), (0, 2), (2, 1)):
        ref = cka_jackknife(ext.sample_a[i].double(), ext.sample_b[j].double(), ext.sample_text, seed=0)
        for name in ("biased", "debiased"):
            for f in ("low", "high", "centre", "se"):
                want = getattr(ref[name], f)
                assert abs(float(jk[name][f][i, j]) - want) <= 1e-10 * abs(want), (i, j, name, f)
