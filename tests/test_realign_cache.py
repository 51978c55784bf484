"""python -m reasoning_embed.realign reads through the HRSA feature cache: a second run reuses every step's
comparison, a changed setting or a changed step file never reuses a stale entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fake_hrsa_run


@pytest.fixture
def counted(monkeypatch):
    """Counts the step comparisons actually computed (the bands and nulls stubbed: what is cached is the row)."""
    from reasoning_embed.report import realignment

    calls = []
    real = realignment._metrics

    def metrics(X, Y, k, seed):
        calls.append(1)
        return real(X, Y, k, seed)

    monkeypatch.setattr(realignment, "_metrics", metrics)
    monkeypatch.setattr(realignment, "_bands_and_calibration",
                        lambda X, Y, k, bands, n_perm, alpha, seed: {"n_perm": n_perm, "bands": bands})
    return calls


def test_realign_reuses_the_cache_and_a_changed_key_recomputes(tmp_path, counted):
    from reasoning_embed.report.realignment import realign_pair
    from reasoning_embed.training.hrsa_callback import save_features

    rng = np.random.default_rng(0)
    a, b = fake_hrsa_run(tmp_path, "a", [0, 5, 10], rng), fake_hrsa_run(tmp_path, "b", [0, 5, 10], rng)
    cache = tmp_path / "cache"
    kw = {"k": 3, "n_perm": 5, "plot": False, "cache_dir": cache}
    first = realign_pair(a, b, tmp_path / "o1", **kw)
    assert len(counted) == 3 and first["steps_reused_from_cache"] == 0
    second = realign_pair(a, b, tmp_path / "o2", **kw)
    assert len(counted) == 3 and second["steps_reused_from_cache"] == 3          # nothing recomputed
    assert second["series"] == first["series"]
    realign_pair(a, b, tmp_path / "o3", **{**kw, "n_perm": 6})                    # another setting: a new key
    assert len(counted) == 6
    save_features(b / "hrsa" / "features" / "step_10.safetensors",                # a changed step file
                  {"embeddings": torch.tensor(rng.normal(size=(24, 6)), dtype=torch.float32)}, 10)
    third = realign_pair(a, b, tmp_path / "o4", **kw)
    assert len(counted) == 7 and third["steps_reused_from_cache"] == 2
    assert third["series"][-1] != first["series"][-1]
    save_features(a / "hrsa" / "features" / "step_0.safetensors",                 # the first step enters every row
                  {"embeddings": torch.tensor(rng.normal(size=(24, 6)), dtype=torch.float32)}, 0)
    realign_pair(a, b, tmp_path / "o5", **kw)
    assert len(counted) == 10
    realign_pair(a, b, tmp_path / "o6", **{**kw, "cache_dir": None})              # no cache: always computed
    assert len(counted) == 13


def test_realign_entry_point_uses_the_feature_cache(tmp_path, counted, monkeypatch):
    import json
    import sys

    from reasoning_embed import realign

    rng = np.random.default_rng(1)
    a, b = fake_hrsa_run(tmp_path, "a", [0, 4], rng), fake_hrsa_run(tmp_path, "b", [0, 4], rng)
    for out in ("o1", "o2"):
        monkeypatch.setattr(sys, "argv", ["reasoning_embed.realign", f"runs=[{a},{b}]", f"out={tmp_path / out}",
                                          "n_perm=4", "k=3", "wandb=false", f"paths.outputs_dir={tmp_path}",
                                          "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"])
        realign.main()
    assert len(counted) == 2                                        # the second run computed nothing
    assert json.loads((tmp_path / "o2" / "realignment.json").read_text())["steps_reused_from_cache"] == 2
    assert len(list((tmp_path / "hrsa" / "feature_cache" / "realign").glob("*.json"))) == 2


def test_the_reports_realignment_reuses_what_realign_recorded(tmp_path, counted):
    from reasoning_embed.report.realignment import realign_pair, sweep_realignment

    rng = np.random.default_rng(2)
    a = fake_hrsa_run(tmp_path / "sweep", "a", [0, 3, 6], rng)
    b = fake_hrsa_run(tmp_path / "sweep", "b", [0, 3, 6], rng, base="a")
    cache = tmp_path / "cache"
    first = realign_pair(a, b, tmp_path / "o", n_perm=50, plot=False, cache_dir=cache)   # the report's n_perm
    assert len(counted) == 3
    summary = sweep_realignment(tmp_path / "sweep", tmp_path / "report", cache_dir=cache)
    assert len(counted) == 3 and summary[0]["last"] == first["series"][-1]
