"""The study report on a synthetic sweep with known scores: deltas, CIs, p-values, failed jobs."""

import csv
import itertools
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from reasoning_embed.report.stats import compare_paired, paired_bootstrap_ci, sign_flip_p_value

TASKS = {"T1": "Retrieval", "T2": "Retrieval", "T3": "STS"}


def _run(root, name, backbone, base, seed, scores, finetune="full", failed=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "finetune": {"mode": finetune},
                                     "backbone": {"name": backbone, "base": base, "role": "x"}}),
                   d / ".hydra" / "config.yaml")
    if failed:
        (d / "failed.json").write_text(json.dumps({"error": failed}))
        return d
    tasks = {t: {"score": s, "type": TASKS[t]} for t, s in scores.items()}
    (d / "metrics.json").write_text(json.dumps({"final_val": {}, "eval": {"bench": {"tasks": tasks}}}))
    return d


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    base = {1: [50.0, 60.0, 70.0], 2: [52.0, 58.0, 71.0]}
    shift = {1: [1.0, -0.5, 2.0], 2: [0.5, 1.5, -1.0]}
    for seed in (1, 2):
        _run(root, f"b{seed}", "base", "base", seed, dict(zip(TASKS, base[seed])))
        _run(root, f"r{seed}", "rl", "base", seed, dict(zip(TASKS, np.add(base[seed], shift[seed]))))
    _run(root, "r3", "rl", "base", 3, {}, failed="RuntimeError: out of memory")
    return root, [d for s in (1, 2) for d in shift[s]]


def test_report_table_deltas_and_failed_job(sweep):
    from reasoning_embed.report.__main__ import make_report

    root, deltas = sweep
    cfg = OmegaConf.create({"sweep": str(root), "runs": None, "out": None, "alpha": 0.05, "n_boot": 2000,
                            "realign": False, "wandb": False, "hrsa": False})
    report = make_report(cfg)
    d = next(x for x in report["table"]["deltas"] if x["backbone"] == "rl")
    assert d["n"] == 6
    assert d["mean_delta"] == pytest.approx(np.mean(deltas))
    lo, hi = paired_bootstrap_ci(deltas, 2000, 0.05, 0)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    from scipy.stats import wilcoxon

    assert d["p_wilcoxon"] == pytest.approx(wilcoxon(deltas).pvalue)
    # exact sign-flip by hand: all 64 sign patterns
    obs = abs(np.mean(deltas))
    null = [abs(np.mean(np.multiply(s, deltas))) for s in itertools.product((1, -1), repeat=6)]
    assert d["p_permutation"] == pytest.approx(np.mean([n >= obs - 1e-12 for n in null]))
    assert d["verdict"] == "no significant difference"
    # Mean(Task) and Mean(Type) of the base row, by hand
    row = next(r for r in report["table"]["rows"] if r["backbone"] == "base")
    mt = [np.mean([50, 60, 70]), np.mean([52, 58, 71])]
    mty = [np.mean([np.mean([50, 60]), 70]), np.mean([np.mean([52, 58]), 71])]
    assert row["cells"]["bench/Mean(Task)"]["mean"] == pytest.approx(np.mean(mt))
    assert row["cells"]["bench/Mean(Task)"]["std"] == pytest.approx(np.std(mt, ddof=1))
    assert row["cells"]["bench/Mean(Type)"]["mean"] == pytest.approx(np.mean(mty))
    md = (root / "report" / "table.md").read_text()
    assert "RuntimeError: out of memory" in md and "r3" in md
    rows = list(csv.reader((root / "report" / "table.csv").open()))
    assert rows[0][:3] == ["backbone", "finetune", "seeds"] and len(rows) == 3


def test_a_clear_improvement_is_significant():
    cmp = compare_paired([1.0, 1.2, 0.9, 1.1, 1.3, 0.8, 1.05, 0.95, 1.15, 1.0], alpha=0.05)
    assert cmp.verdict == "better than base" and cmp.ci_low > 0


def test_sign_flip_p_value_is_super_uniform_under_the_null():
    rng = np.random.default_rng(0)
    ps = [sign_flip_p_value(rng.normal(size=8)) for _ in range(300)]
    assert np.mean(np.array(ps) <= 0.1) <= 0.13


def test_report_hrsa_summary_of_the_backbones(micro_backbone, corpus_dir, tmp_path):
    """Each reasoning/SFT backbone is compared with its base at the last layer; the same weights give
    CKA and k-NN overlap of exactly 1, and a base missing from the runs is said, not skipped silently."""
    from reasoning_embed.report.__main__ import make_report

    root = tmp_path / "sweep"
    for name, backbone, base in (("b1", "base", "base"), ("r1", "rl", "base"), ("s1", "sft", "absent_base")):
        d = _run(root, name, backbone, base, 1, {"T1": 50.0})
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        cfg.backbone.path, cfg.backbone.tiny = str(micro_backbone), None
        OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    cfg = OmegaConf.create({"sweep": str(root), "runs": None, "out": None, "alpha": 0.05, "n_boot": 200,
                            "realign": False, "wandb": False, "hrsa": True,
                            "hrsa_overrides": [f"corpus_dir={corpus_dir}", "n_texts=40", "max_length=32",
                                               "stats.n_boot=20", "stats.n_perm=20", "figures=false"]})
    report = make_report(cfg)
    by_name = {r["backbone"]: r for r in report["backbone_hrsa"]}
    assert set(by_name) == {"rl", "sft"}
    rl = by_name["rl"]
    assert rl["cka"] == pytest.approx(1.0, abs=1e-6) and rl["knn10"] == pytest.approx(1.0)
    assert rl["procrustes_cosine_test"] == pytest.approx(1.0, abs=1e-4)
    assert (root / "report" / "hrsa" / "base__vs__rl" / "hrsa.json").is_file()
    assert "absent_base" in by_name["sft"]["note"]
    md = (root / "report" / "table.md").read_text()
    assert "HRSA at the last layer" in md and "| rl | base | 1.000" in md
