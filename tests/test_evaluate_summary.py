"""Aggregation against a hand computation, failed tasks (loud, listed, non-zero exit unless allowed), and
the fail-fast message for a benchmark whose data is not cached while offline."""

import json
import sys
import time

import pytest

from conftest import synthetic_rows, write_jsonl


pytestmark = pytest.mark.usefixtures("one_thread")


def test_aggregate_matches_hand_computation():
    from reasoning_embed.evaluation.summary import aggregate, build_summary, summary_metrics, task_score

    # per task: mean over (split, subset) x100
    score, per = task_score({"test": [{"hf_subset": "en", "main_score": 0.5}, {"hf_subset": "de", "main_score": 0.3}],
                             "dev": [{"hf_subset": "en", "main_score": 0.7}]})
    assert score == pytest.approx(50.0) and per == {"test/en": 50.0, "test/de": pytest.approx(30.0), "dev/en": 70.0}
    with pytest.raises(ValueError, match="no main score"):
        task_score({"test": [{"hf_subset": "en", "main_score": None}]})

    scores = {"R1": ("Retrieval", 40.0), "R2": ("Retrieval", 60.0), "R3": ("Retrieval", 20.0),
              "S1": ("STS", 80.0), "C1": ("Classification", 70.0), "C2": ("Classification", 50.0)}
    agg = aggregate(scores)
    # Mean(Task) = (40+60+20+80+70+50)/6 = 320/6; types: Retrieval 40, STS 80, Classification 60
    assert agg["mean_task"] == pytest.approx(320 / 6)
    assert agg["type_means"] == {"Classification": 60.0, "Retrieval": 40.0, "STS": 80.0}
    assert agg["mean_type"] == pytest.approx((40 + 80 + 60) / 3)
    tasks = [{"task": k, "type": t, "score": s} for k, (t, s) in scores.items()]
    summary = build_summary(tasks, [{"task": "X", "type": "STS", "error": "boom"}], {"model": "m", "benchmark": "b"})
    assert summary["n_tasks"] == 7 and summary["n_failed"] == 1 and summary["complete"] is False
    assert summary["mean_type"] == pytest.approx(60.0)  # failed tasks are not averaged in
    flat = summary_metrics(summary)
    assert flat["eval/mean_task"] == pytest.approx(320 / 6) and flat["eval/type/STS"] == 80.0
    assert flat["eval/R2"] == 60.0 and flat["eval/n_failed"] == 1.0


def _two_task_bench(tmp_path):
    write_jsonl(tmp_path / "data" / "good.jsonl", synthetic_rows(8, "g"))
    write_jsonl(tmp_path / "data" / "bad.jsonl", synthetic_rows(8, "b"))
    return {"name": "two", "local_tasks": [{"kind": "jsonl", "path": str(tmp_path / "data")}]}


@pytest.fixture
def failing_search(monkeypatch):
    from reasoning_embed.evaluation.adapter import MtebEncoderAdapter

    original = MtebEncoderAdapter.search

    def search(self, queries, *, task_metadata, **kw):
        if task_metadata.name == "LocalBadRetrieval":
            raise RuntimeError("simulated failure inside the task")
        return original(self, queries, task_metadata=task_metadata, **kw)

    monkeypatch.setattr(MtebEncoderAdapter, "search", search)


def test_failed_task_is_loud_listed_and_raises_unless_allowed(micro_encoder, tmp_path, failing_search, capsys):
    from reasoning_embed.evaluation import evaluate_model
    from reasoning_embed.evaluation.errors import EvaluationFailedError

    bench = _two_task_bench(tmp_path)
    with pytest.raises(EvaluationFailedError, match="LocalBadRetrieval") as err:
        evaluate_model(micro_encoder, bench, tmp_path / "out")
    assert "TASK FAILED: LocalBadRetrieval: RuntimeError: simulated failure" in capsys.readouterr().err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == json.loads(json.dumps(err.value.summary))
    assert [f["task"] for f in summary["failed"]] == ["LocalBadRetrieval"]
    assert "simulated failure" in summary["failed"][0]["error"]
    assert [t["task"] for t in summary["tasks"]] == ["LocalGoodRetrieval"] and not summary["complete"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "FAILED" in md and "LocalBadRetrieval" in md
    assert not (tmp_path / "out" / "results" / "LocalBadRetrieval.json").exists()

    summary = evaluate_model(micro_encoder, bench, tmp_path / "out2", allow_failures=True)
    assert summary["n_failed"] == 1 and summary["mean_task"] == summary["tasks"][0]["score"]


def _cli(monkeypatch, *args):
    from reasoning_embed import evaluate

    monkeypatch.setattr(sys, "argv", ["reasoning_embed.evaluate", *args])
    try:
        evaluate.main()
    except SystemExit as e:
        return e.code
    return 0


def test_cli_exit_codes_for_failed_tasks(micro_encoder, tmp_path, failing_search, monkeypatch, capsys):
    from reasoning_embed.models.export import export_encoder

    export_encoder(micro_encoder, tmp_path / "run" / "model")
    _two_task_bench(tmp_path)
    common = [f"model={tmp_path / 'run'}", "benchmark=local_files",
              f"benchmark.local_tasks=[{{kind:jsonl,path:{tmp_path / 'data'}}}]", "hydra/job_logging=disabled",
              "hydra/hydra_logging=disabled"]
    assert _cli(monkeypatch, *common, f"out={tmp_path / 'o1'}") == 1
    err = capsys.readouterr().err
    assert "TASK FAILED: LocalBadRetrieval" in err and "allow_failures=true" in err
    assert _cli(monkeypatch, *common, f"out={tmp_path / 'o2'}", "allow_failures=true") == 0
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert summary["n_failed"] == 1 and (tmp_path / "o2" / ".hydra" / "config.yaml").exists()


def test_missing_benchmark_data_fails_fast_with_a_fetch_hint(tmp_path, monkeypatch, capsys):
    from reasoning_embed.evaluation import evaluate_model
    from reasoning_embed.evaluation.errors import BenchmarkDataMissingError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE"):
        monkeypatch.delenv(var, raising=False)
    start = time.perf_counter()
    with pytest.raises(BenchmarkDataMissingError) as err:
        # the model does not exist: the data check must come first, before any model is loaded
        evaluate_model(str(tmp_path / "no-such-model"), "bright", tmp_path / "out")
    msg = str(err.value)
    assert time.perf_counter() - start < 30
    assert "mteb/BRIGHT" in msg and "HF_HUB_OFFLINE=1" in msg and "BrightBiologyRetrieval" in msg
    assert "hf download mteb/BRIGHT --repo-type dataset" in msg and "prefetch=true" in msg
    assert str(tmp_path / "hf") in msg
    assert not (tmp_path / "out").exists()

    # the CLI prints it as one line and exits 2
    code = _cli(monkeypatch, "model=/nonexistent", "benchmark=bright", f"out={tmp_path / 'o'}",
                "hydra/job_logging=disabled", "hydra/hydra_logging=disabled")
    assert code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "mteb/BRIGHT" in lines[0]


def test_benchmark_configs_resolve():
    from reasoning_embed.evaluation.benchmarks import build_tasks, resolve_benchmark_config
    from reasoning_embed.evaluation.errors import EvaluationConfigError

    bright = resolve_benchmark_config("bright")
    assert len(bright["mteb_tasks"]) == 12 and len(set(bright["mteb_tasks"])) == 12
    tasks, _ = build_tasks(bright)
    assert len(tasks) == 12 and all(t.metadata.dataset["path"] == "mteb/BRIGHT" for t in tasks)
    assert resolve_benchmark_config("mteb_code_v1")["mteb_benchmark"] == "MTEB(Code, v1)"
    assert resolve_benchmark_config("mteb_multilingual_v2")["mteb_benchmark"] == "MTEB(Multilingual, v2)"
    explicit = resolve_benchmark_config(["STS12", "ArguAna", "STS12"])
    tasks, _ = build_tasks(explicit)
    assert [t.metadata.name for t in tasks] == ["STS12", "ArguAna"]  # each task once
    with pytest.raises(EvaluationConfigError, match="NoSuchTask"):
        build_tasks(resolve_benchmark_config("STS12,NoSuchTask"))
    with pytest.raises(EvaluationConfigError, match="selects no task"):
        resolve_benchmark_config("tasks")
