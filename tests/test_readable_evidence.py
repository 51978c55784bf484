"""Readable evidence: the probe's accuracies carry intervals and a minimum-test-size warning, and the
realignment figure shows its band in the legend, integer step ticks and one y-scale across panels."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch


def _probe_ext(n_texts: int, rng):
    y = np.array(["a", "b", "c"] * (n_texts // 3))
    centres = {"a": 0.0, "b": 3.0, "c": -3.0}
    A = torch.tensor(np.stack([rng.normal(centres[c], 1.0, size=8) for c in y]))
    ext = SimpleNamespace(text_ok=torch.ones(len(y), dtype=torch.bool), pooled_a=A,
                          pooled_b=A @ torch.tensor(rng.normal(size=(8, 8))), probe_layer=(3, 3), pooling="mean")
    return ext, list(y)


@pytest.mark.parametrize("n_texts,warned", [(30, True), (600, False)])
def test_probe_accuracies_carry_intervals_and_a_minimum_test_size(n_texts, warned):
    """probe_transfer.png was drawn from 3 test texts (chance 0.67 above the native probe's 0.33) with no warning."""
    from reasoning_embed.hrsa.analysis import _probe

    ext, labels = _probe_ext(n_texts, np.random.default_rng(0))
    cfg = {"min_per_class": 10, "split": (0.8, 0.1, 0.1), "C": 1.0, "max_iter": 2000}
    out = _probe(ext, labels, cfg, seed=0)
    assert ("warning" in out) is warned and out["min_test"] == 30
    if warned:
        assert f"only {out['n_test']} test texts" in out["warning"]
    for key in ("native", "raw_transfer", "aligned_transfer", "b_own", "chance"):
        lo, hi = out["intervals"][key]
        assert lo <= out[key] <= hi
        assert (hi - lo > 0.4) is warned            # 3 test texts: an interval too wide to rank bars


def test_realignment_figure_has_band_in_legend_integer_steps_and_one_y_scale(tmp_path, monkeypatch):
    from matplotlib.ticker import MaxNLocator

    import reasoning_embed.utils.io as io
    from reasoning_embed.report.realignment import plot_realignment

    figs = []
    monkeypatch.setattr(io, "save_figure", lambda fig, path, **kw: figs.append(fig))
    band = {"cka_band": [0.4, 0.6], "knn_band": [0.1, 0.3], "cka_calibrated": {"score": 0.2},
            "knn_calibrated": {"score": 0.1}}
    row = {"cka": 0.5, "knn": 0.2, "procrustes_cos_heldout": 0.3, "procrustes_cos_insample": 0.4, "dimcorr": 0.1,
           **band}
    series = [{"step": s, "a_vs_b": row, "a_vs_init": {"cka": 0.9, "knn": 0.5},
               "b_vs_init": {"cka": 0.8, "knn": 0.4}} for s in (0, 1, 2)]
    plot_realignment({"run_a": "a", "run_b": "b", "k": 5, "series": series}, tmp_path / "r.png")
    axes = figs[0].axes
    for ax in axes:
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())
    for ax in axes[:2]:                                   # CKA and k-NN: both on [0, 1] with the band named
        assert ax.get_ylim() == pytest.approx((-0.05, 1.05))
        assert any("95% band" in t.get_text() for t in ax.get_legend().get_texts())
        assert any("calibrated" in t.get_text() for t in ax.get_legend().get_texts())
    assert axes[2].get_ylim() == axes[3].get_ylim() == pytest.approx((-1.05, 1.05))


def test_sweep_realignment_figure_shows_raw_band_and_calibrated(tmp_path, monkeypatch):
    import reasoning_embed.utils.io as io
    from reasoning_embed.report.realignment import plot_sweep_realignment

    figs = []
    monkeypatch.setattr(io, "save_figure", lambda fig, path, **kw: figs.append(fig))
    row = {"cka": 0.5, "knn": 0.2, "cka_band": [0.4, 0.6], "knn_band": [0.1, 0.3],
           "cka_calibrated": {"score": 0.2}, "knn_calibrated": {"score": 0.1}}
    res = {"run_a": "a", "run_b": "b", "series": [{"step": s, "a_vs_b": row} for s in (0, 5)]}
    plot_sweep_realignment([res], tmp_path / "s.png")
    for ax in figs[0].axes:
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert any("95% band" in t for t in labels) and any("calibrated" in t for t in labels)


def test_backbone_table_interval_is_the_debiased_population_interval_of_the_value_beside_it():
    from reasoning_embed.report.backbone_hrsa import _stats_summary

    last = {"n_rows": 512, "knn_jaccard": {},
            "cka": {"biased": {"estimate": 0.45, "low": 0.43, "high": 0.47, "p_value": 0.01},
                    "debiased": {"estimate": 0.02, "low": -0.03, "high": 0.06}}}
    out = _stats_summary({"stats": {"per_layer": [last]}})
    assert out["cka_debiased_stats"] == 0.02 and out["cka_debiased_ci"] == [-0.03, 0.06]
    assert out["stats_rows"] == 512 and out["cka_p"] == 0.01
