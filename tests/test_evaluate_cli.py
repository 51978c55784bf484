"""`python -m reasoning_embed.evaluate` end to end on a trained tiny run directory (a real subprocess)."""

import json
import os
import subprocess
import sys

import torch

from conftest import ROOT


def test_evaluate_cli_on_a_run_directory(micro_encoder, corpus_dir, tmp_path):
    from reasoning_embed.models.export import export_encoder

    with torch.no_grad():  # a "trained" run: weights moved off the init
        for p in micro_encoder.parameters():
            p.add_(0.02 * torch.randn_like(p))
    run = tmp_path / "run"
    export_encoder(micro_encoder, run / "model")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("encoder:\n  max_query_length: 32\n  max_passage_length: 48\n")
    out = tmp_path / "eval"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reasoning_embed.evaluate", f"model={run}", "benchmark=local", f"out={out}",
         "max_queries=8", "batch_size=128", f"paths.data_dir={corpus_dir.parent}",
         "benchmark.exclude=[StdlibCodeRetrieval,LocalBrightTextRetrieval,LocalBrightDataRetrieval]"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Mean(Task)" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model_kind"] == "run" and summary["benchmark"] == "local" and summary["complete"]
    assert [t["task"] for t in summary["tasks"]] == ["StdlibDocstringRetrieval", "LocalBrightSystemRetrieval",
                                                     "LocalBrightToolingRetrieval"] and summary["failed"] == []
    assert summary["mean_task"] == sum(t["score"] for t in summary["tasks"]) / 3
    for t in summary["tasks"]:
        assert (out / "results" / f"{t['task']}.json").exists()
    assert (out / "summary.md").exists() and (out / ".hydra" / "config.yaml").exists()
