"""The report's two answers a study asks of it beyond the deltas: how each run stands against BM25 (per task, and
per run against its own validation sample's baselines), and from which step the paired runs' realignment plateaus."""

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import synthetic_rows, write_jsonl

REPORT = {"runs": None, "out": None, "alpha": 0.05, "n_boot": 200, "realign": False, "wandb": False, "hrsa": False}


def _run(root, name, backbone, seed, bench, task_scores, val=None, val_baselines=None):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "finetune": {"mode": "full"}, "paths": {"data_dir": str(root)},
                                     "backbone": {"name": backbone, "base": "base", "role": "x"},
                                     "eval": {"benchmark": [bench]}}), d / ".hydra" / "config.yaml")
    tasks = [{"task": t, "score": s, "type": "Retrieval"} for t, s in task_scores.items()]
    metrics = {"status": "complete", "final_val": val or {}, "baselines": val_baselines or {},
               "eval": {bench["name"]: {"tasks": tasks}}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def test_runs_against_bm25_per_task_and_against_their_own_validation_baselines(tmp_path):
    from reasoning_embed.evaluation.runner import evaluate_model
    from reasoning_embed.report.build import make_report

    files = [write_jsonl(tmp_path / "data" / f"{n}.jsonl", synthetic_rows(12, prefix=n)) for n in ("alpha", "beta")]
    bench = {"name": "mini", "local_tasks": [{"kind": "jsonl", "path": str(tmp_path / "data")}]}
    # the oracle: what `python -m reasoning_embed.evaluate model=bm25` scores on the same tasks
    oracle = {t["task"]: t["score"] for t in evaluate_model("bm25", bench, tmp_path / "oracle")["tasks"]}
    ta, tb = sorted(oracle)
    assert len(oracle) == 2 and all(0 < s <= 100 for s in oracle.values())
    root = tmp_path / "sweep"
    offsets = {("base", 1): (+2.0, -3.0), ("base", 2): (-1.0, +1.0), ("rl", 1): (+0.5, +4.0), ("rl", 2): (+3.0, +2.0)}
    # validation: the same trained score, but each seed's sample gives BM25 a different score (0.45 / 0.55)
    own_bm25 = {1: 0.45, 2: 0.55}
    for (backbone, seed), (da, db) in offsets.items():
        _run(root, f"{backbone}{seed}", backbone, seed, bench, {ta: oracle[ta] + da, tb: oracle[tb] + db},
             val={"val/code/ndcg@10": 0.50}, val_baselines={"bm25": {"val/code/ndcg@10": own_bm25[seed]}})
    report = make_report(OmegaConf.create({**REPORT, "sweep": str(root)}))
    rows = {(r["benchmark"], r["task"], r["backbone"]): r for r in report["baselines"]}

    base_a = rows[("mini", ta, "base")]
    assert base_a["baseline_score"] == pytest.approx(oracle[ta])
    assert (base_a["at_or_above"], base_a["n"]) == (1, 2)
    assert base_a["lowest_margin"] == pytest.approx(-1.0) and base_a["mean_margin"] == pytest.approx(0.5)
    assert rows[("mini", tb, "rl")]["at_or_above"] == 2 and rows[("mini", tb, "rl")]["lowest_margin"] == pytest.approx(2.0)
    # Mean(Task): each run's mean over the two tasks against BM25's
    mean_base = rows[("mini", "Mean(Task)", "base")]
    assert mean_base["lowest_margin"] == pytest.approx(min((2 - 3) / 2, (-1 + 1) / 2))
    assert mean_base["at_or_above"] == 1                     # seed 2's margin is exactly 0: counted as reached
    # validation: each run against its own sample's BM25 (+5 and -5), not against the mean of the samples (0, 0)
    val = rows[("val_ndcg@10", "code", "base")]
    assert (val["at_or_above"], val["lowest_margin"], val["mean_margin"]) == (1, pytest.approx(-5.0), pytest.approx(0.0))
    md = (root / "report" / "table.md").read_text()
    assert "## Against the baselines" in md
    assert f"mini: on no task are all 4 runs >= BM25; runs >= BM25 on Mean(Task) (3 of 4 runs;" in md
    assert f"{ta} (3 of 4 runs; mean margin +1.12, lowest run -1.00)" in md
    assert f"| mini | bm25 | {ta} | base | full | {oracle[ta]:.2f} |" in md
    assert (root / "report" / "baselines" / "bm25" / "mini" / "summary.json").is_file()


def test_a_benchmark_bm25_cannot_score_leaves_the_validation_rows(tmp_path, caplog):
    from reasoning_embed.report.build import make_report

    bench = {"name": "gone", "local_tasks": [{"kind": "jsonl", "path": str(tmp_path / "missing.jsonl")}]}
    root = tmp_path / "sweep"
    _run(root, "base1", "base", 1, bench, {"T": 40.0}, val={"val/code/ndcg@10": 0.5},
         val_baselines={"bm25": {"val/code/ndcg@10": 0.4}})
    with caplog.at_level("WARNING", logger="reasoning_embed.report"):
        report = make_report(OmegaConf.create({**REPORT, "sweep": str(root)}))
    assert "no BM25 on the evaluated benchmarks" in caplog.text and "missing.jsonl" in caplog.text
    assert {r["benchmark"] for r in report["baselines"]} == {"val_ndcg@10"}


def _controlled_run(root, name, backbone, embeddings_by_step):
    from reasoning_embed.training.hrsa_callback import save_features

    run = root / name
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 1, "finetune": {"mode": "full"}, "data": {"train": "d"},
                                     "backbone": {"name": backbone, "base": "base"}}), run / ".hydra" / "config.yaml")
    for step, x in embeddings_by_step.items():
        save_features(run / "hrsa" / "features" / f"step_{step}.safetensors",
                      {"embeddings": torch.tensor(x, dtype=torch.float32)}, step)
    return run


def test_the_realignment_plateau_is_the_step_the_paired_runs_agree_from(tmp_path):
    """B is unrelated to A until step 20 and equal to A from then on: CKA and k-NN reach 1 at step 20 and stay."""
    from reasoning_embed.report.plateau import realignment_groups, render_realignment_markdown
    from reasoning_embed.report.realignment import sweep_realignment

    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 8))
    steps = [0, 10, 20, 30, 40]
    _controlled_run(tmp_path / "sweep", "a", "base", {s: a for s in steps})
    _controlled_run(tmp_path / "sweep", "b", "sft", {s: (a if s >= 20 else rng.normal(size=(40, 8))) for s in steps})
    pairs = sweep_realignment(tmp_path / "sweep", tmp_path / "report", n_perm=0)
    assert [(p["backbone_a"], p["backbone_b"]) for p in pairs] == [("base", "sft")]
    assert pairs[0]["plateau"]["cka"]["step"] == 20 and pairs[0]["plateau"]["cka"]["reached"]
    assert pairs[0]["plateau"]["knn"]["step"] == 20 and pairs[0]["plateau"]["knn"]["last"] == pytest.approx(1.0)
    group, = realignment_groups(pairs)
    assert group["metrics"]["cka"]["median_step"] == 20 and group["metrics"]["cka"]["reached"] == 1
    assert group["metrics"]["cka"]["last"] == pytest.approx(1.0) and group["metrics"]["cka"]["first"] < 0.9
    assert "| base | sft | full | 1 | cka |" in render_realignment_markdown([group])
    assert "20 [20, 20] | 1 of 1 |" in render_realignment_markdown([group])
    # B agrees with A only at the last record: no plateau is claimed
    _controlled_run(tmp_path / "late", "a", "base", {s: a for s in steps})
    _controlled_run(tmp_path / "late", "b", "sft", {s: (a if s == 40 else rng.normal(size=(40, 8))) for s in steps})
    late, = realignment_groups(sweep_realignment(tmp_path / "late", tmp_path / "late_report", n_perm=0))
    assert late["metrics"]["cka"]["reached"] == 0 and late["metrics"]["cka"]["median_step"] is None
    assert "not reached by step 40 | 0 of 1 |" in render_realignment_markdown([late])


def test_the_baselines_and_plateaus_reach_wandb(tmp_path, monkeypatch):
    """The report's W&B run gets the baselines rows and the plateau rows as tables (wandb.init recorded, not sent)."""
    import wandb

    from reasoning_embed.report.build import _log_wandb

    logged = {}

    class Run:
        def log(self, data):
            logged.update(data)

        def finish(self):
            logged["finished"] = True

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "init", lambda **kw: Run())
    row = {"benchmark": "local", "baseline": "bm25", "task": "T", "backbone": "b", "finetune": "full", "n": 2,
           "baseline_score": 40.0, "mean": 41.0, "lowest": 39.0, "at_or_above": 1, "mean_margin": 1.0,
           "lowest_margin": -1.0}
    group = {"backbone_a": "b", "backbone_b": "s", "finetune": "full", "seeds": [1], "metrics": {"cka": {
        "first": 0.9, "last": 0.99, "tol": 0.005, "reached": 1, "n": 1, "median_step": 30.0, "min_step": 30,
        "max_step": 30, "last_step": 180}}}
    table = {"columns": [], "rows": [], "deltas": []}
    _log_wandb(table, tmp_path, OmegaConf.create({"wandb": True}),
               {"baselines": [row], "realignment_groups": [group], "backbone_hrsa": []})
    assert logged["finished"]
    assert logged["report/baselines"].data == [[row[c] for c in logged["report/baselines"].columns]]
    plateau = logged["report/realignment_plateau"]
    assert dict(zip(plateau.columns, plateau.data[0]))["median_step"] == 30.0


def test_runs_reading_different_data_under_one_benchmark_name_get_their_own_bm25(tmp_path):
    """Two runs of a sweep evaluated on "mini" over different files: each is compared with BM25 on its own data."""
    from reasoning_embed.evaluation.runner import evaluate_model
    from reasoning_embed.report.build import make_report

    benches, oracles = [], []
    easy = synthetic_rows(12, prefix="alpha")
    # every query the same words: BM25 cannot tell the positives apart
    hard = [{**r, "query": [r["query"][0], "alpha beta gamma"], "pos": [f"{r['pos'][0]} alpha beta gamma"]}
            for r in synthetic_rows(12, prefix="beta")]
    for n, rows in enumerate((easy, hard)):
        write_jsonl(tmp_path / f"data{n}" / "same.jsonl", rows)
        benches.append({"name": "mini", "local_tasks": [{"kind": "jsonl", "path": str(tmp_path / f"data{n}")}]})
        oracles.append(evaluate_model("bm25", benches[-1], tmp_path / f"oracle{n}")["tasks"][0])
    assert oracles[0]["task"] == oracles[1]["task"] and oracles[0]["score"] != oracles[1]["score"]
    task = oracles[0]["task"]
    root = tmp_path / "sweep"
    for n in (0, 1):
        _run(root, f"run{n}", f"backbone{n}", 1, benches[n], {task: oracles[n]["score"] + 1.0})
    report = make_report(OmegaConf.create({**REPORT, "sweep": str(root)}))
    rows = {r["backbone"]: r for r in report["baselines"] if r["task"] == task}
    for n in (0, 1):
        assert rows[f"backbone{n}"]["baseline_score"] == pytest.approx(oracles[n]["score"])
        assert rows[f"backbone{n}"]["lowest_margin"] == pytest.approx(1.0)
    assert len(list((root / "report" / "baselines" / "bm25").iterdir())) == 2


def test_bm25_is_scored_only_on_the_benchmarks_the_report_lists(tmp_path, monkeypatch):
    """report.bm25_benchmarks (default [local, bright]): a benchmark outside it gets no BM25 (its tokens would be
    empty on other languages), and is never scored; the validation rows stay."""
    import reasoning_embed.evaluation.runner as runner
    from reasoning_embed.report.build import make_report

    called = []
    monkeypatch.setattr(runner, "evaluate_model", lambda *a, **k: called.append(a) or {"tasks": []})
    bench = {"name": "mteb_multilingual_v2", "mteb_tasks": ["T2Retrieval"]}
    root = tmp_path / "sweep"
    _run(root, "base1", "base", 1, bench, {"T2Retrieval": 40.0}, val={"val/code/ndcg@10": 0.5},
         val_baselines={"bm25": {"val/code/ndcg@10": 0.4}})
    report = make_report(OmegaConf.create({**REPORT, "sweep": str(root), "bm25_benchmarks": ["local", "bright"]}))
    assert called == [] and {r["benchmark"] for r in report["baselines"]} == {"val_ndcg@10"}
    make_report(OmegaConf.create({**REPORT, "sweep": str(root), "bm25_benchmarks": None}))
    assert len(called) == 1 and called[0][0] == "bm25"


def test_the_shipped_report_config_scores_bm25_on_local_and_bright_only():
    from reasoning_embed import CONF_DIR

    assert list(OmegaConf.load(CONF_DIR / "report.yaml").bm25_benchmarks) == ["local", "bright"]
