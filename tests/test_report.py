"""The study report on a synthetic sweep with known scores: per-seed deltas, CIs, p-values, verdicts, failed jobs."""

import csv
import itertools
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from reasoning_embed.report.stats import apply_holm, compare_seeds, hierarchical_bootstrap_ci, sign_flip_p_value

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
    return root, shift


def test_report_table_deltas_and_failed_job(sweep):
    from reasoning_embed.report.__main__ import make_report

    root, shift = sweep
    cfg = OmegaConf.create({"sweep": str(root), "runs": None, "out": None, "alpha": 0.05, "n_boot": 2000,
                            "realign": False, "wandb": False, "hrsa": False})
    report = make_report(cfg)
    d = next(x for x in report["table"]["deltas"] if x["backbone"] == "rl")
    per_seed = [np.mean(shift[1]), np.mean(shift[2])]         # the seed is the unit: 2 deltas, not 6
    assert d["n_seeds"] == 2 and d["per_seed_delta"] == pytest.approx(per_seed)
    assert d["mean_delta"] == pytest.approx(np.mean(per_seed))
    lo, hi = hierarchical_bootstrap_ci([shift[1], shift[2]], 2000, 0.05, 0)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((lo, hi))
    # exact sign-flip over the 2 seeds by hand: 4 sign patterns, the smallest attainable p is 0.5
    obs = abs(np.mean(per_seed))
    null = [abs(np.mean(np.multiply(s, per_seed))) for s in itertools.product((1, -1), repeat=2)]
    assert d["p_sign_flip"] == pytest.approx(np.mean([n >= obs - 1e-12 for n in null]))
    assert d["p_min"] == 0.5
    assert d["verdict"] in ("underpowered", "equivalent") and "p_tost" in d
    assert d["per_task"] and {t["task"] for t in d["per_task"]} == set(TASKS)
    md = (root / "report" / "table.md").read_text()
    assert "smallest attainable p = 0.5" in md or "equivalent within" in md
    assert "Secondary view: per-task deltas" in md
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
    per_seed = {s: [v, v + 0.1, v - 0.1] for s, v in enumerate([1.0, 1.2, 0.9, 1.1, 1.3, 0.8, 1.05, 0.95])}
    cmp, = apply_holm([compare_seeds(per_seed, margin=0.5, alpha=0.05)])
    assert cmp.verdict == "different" and "better" in cmp.verdict_text and cmp.ci_low > 0


def test_two_seeds_are_underpowered_not_no_difference():
    """4 (seed, task) pairs used to give "no significant difference" by construction; now the verdict says why."""
    cmp, = apply_holm([compare_seeds({1: [3.0, 2.5], 2: [2.0, 4.0]}, margin=0.1)])
    assert cmp.p_min == 0.5 and cmp.verdict == "underpowered" and "smallest attainable p = 0.5" in cmp.verdict_text


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
    assert rl["cka_calibrated"] == pytest.approx(1.0) and rl["knn10_calibrated"] == pytest.approx(1.0)
    assert (root / "report" / "hrsa" / "base__vs__rl" / "hrsa.json").is_file()
    assert "absent_base" in by_name["sft"]["note"]
    md = (root / "report" / "table.md").read_text()
    assert "HRSA at the last layer" in md and "| rl | base | 1.000" in md
    # the interval printed is the one of the value beside it (stats sample, debiased: the population CKA)
    lo, hi = rl["cka_debiased_ci"]
    assert lo <= rl["cka_debiased_stats"] <= hi and rl["stats_rows"] > 0
    assert f"{rl['cka_debiased_stats']:.3f} ({lo:.3f}, {hi:.3f}) [{rl['stats_rows']}]" in md


def test_backbone_specs_prefer_the_backbone_the_runs_trained_from(tmp_path, caplog):
    """A tiny backbone is read from the triple a run recorded in metrics.json, not rebuilt from its config (whose
    cache key may have moved on); a recorded path that is gone falls back to the config, with a warning."""
    from reasoning_embed.report.backbone_hrsa import backbone_specs

    triple = tmp_path / "tiny_triple-old" / "tiny_base"
    triple.mkdir(parents=True)
    runs = []
    for name, recorded in (("b1", triple), ("r1", tmp_path / "gone" / "tiny_rlvr")):
        d = _run(tmp_path / "sweep", name, "tiny_base" if name == "b1" else "tiny_rlvr", "tiny_base", 1, {"T1": 50.0})
        cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
        cfg.backbone.path, cfg.backbone.tiny = "/backbones/tiny_base", {"variant": "base"}
        OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
        metrics = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**metrics, "backbone_path": str(recorded)}))
        runs.append(d)
    with caplog.at_level("WARNING", logger="reasoning_embed.report"):
        specs = backbone_specs(runs)
    assert specs["tiny_base"]["path"] == str(triple) and specs["tiny_base"]["tiny"] is None
    assert specs["tiny_rlvr"]["path"] == "/backbones/tiny_base" and specs["tiny_rlvr"]["tiny"] == {"variant": "base"}
    assert "gone" in caplog.text and "tiny_rlvr" in caplog.text


def test_run_dirs_judges_only_path_parts_below_the_sweep(tmp_path):
    """A sweep stored under a folder named ``report`` keeps its runs; the report's own sub-directory is skipped."""
    from reasoning_embed.report.runs import run_dirs

    sweep = tmp_path / "report" / "sweep"
    for name in ("0", "1", "report/hrsa/x"):
        (sweep / name / ".hydra").mkdir(parents=True)
        (sweep / name / ".hydra" / "config.yaml").write_text("seed: 1\n")
    found = run_dirs(OmegaConf.create({"sweep": str(sweep), "runs": None}))
    assert [p.name for p in found] == ["0", "1"]


def test_empty_comparison_table_says_why(tmp_path):
    from reasoning_embed.report.build import make_report

    root = tmp_path / "sweep"
    _run(root, "a1", "alone", "missing_base", 1, {"T1": 50.0})
    cfg = OmegaConf.create({"sweep": str(root), "runs": None, "out": None, "alpha": 0.05, "n_boot": 100,
                            "realign": False, "wandb": False, "hrsa": False})
    report = make_report(cfg)
    reason = report["table"]["empty_reason"]
    assert "alone (base: missing_base)" in reason
    assert "No comparison:" in (root / "report" / "table.md").read_text()


def test_report_flags_runs_whose_model_collapsed_or_got_worse(tmp_path):
    """A collapsed run and one whose training halved held-out nDCG@10 are named in table.md and report.json
    (their scores stay in the table); a healthy run is not."""
    from reasoning_embed.report.build import make_report

    root = tmp_path / "sweep"
    healthy = {"initial_val": {"val/ndcg@10": 0.08}, "final_val": {"val/ndcg@10": 0.12}, "collapsed": False}
    worse = {"initial_val": {"val/ndcg@10": 0.0877}, "final_val": {"val/ndcg@10": 0.0}, "collapsed": False}
    collapsed = {"initial_val": {}, "final_val": {}, "collapsed": True,
                 "embedding_spread": {"mean_cosine": 0.999, "effective_rank": 1.01}}
    for name, extra in (("ok", healthy), ("worse", worse), ("flat", collapsed)):
        d = _run(root, name, "base", "base", 1, {"T1": 50.0})
        metrics = json.loads((d / "metrics.json").read_text())
        (d / "metrics.json").write_text(json.dumps({**metrics, **extra}))
    cfg = OmegaConf.create({"sweep": str(root), "runs": None, "out": None, "alpha": 0.05, "n_boot": 100,
                            "realign": False, "wandb": False, "hrsa": False})
    report = make_report(cfg)
    flagged = {p.rsplit("/", 1)[-1]: u["unusable"] for u in report["unusable"] for p in [u["dir"]]}
    assert set(flagged) == {"worse", "flat"}
    assert flagged["worse"] == ["training made held-out retrieval worse (nDCG@10 0.0877 -> 0.0000)"]
    assert "collapsed" in flagged["flat"][0] and "0.9990" in flagged["flat"][0]
    assert json.loads((root / "report" / "report.json").read_text())["unusable"] == report["unusable"]
    md = (root / "report" / "table.md").read_text()
    assert "2 run(s) ended with an unusable model" in md and "0.0877 -> 0.0000" in md and "embeddings collapsed" in md
    assert f"`{root / 'ok'}`" not in md and len(report["runs"]) == 3
