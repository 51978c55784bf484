"""``out=`` is where results go, whatever ``hydra.run.dir`` says (sweeps and scripts set both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
       "OMP_NUM_THREADS": "1"}
pytestmark = pytest.mark.slow


def _run(module: str, *args: str):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_evaluate_writes_to_out_not_the_hydra_dir(micro_backbone, corpus_dir, tmp_path):
    out, hydra_dir = tmp_path / "out", tmp_path / "hydra_dir"
    _run("reasoning_embed.evaluate", f"model={micro_backbone}", "benchmark=local", f"out={out}",
         f"hydra.run.dir={hydra_dir}", "max_queries=4", f"paths.data_dir={corpus_dir.parent}",
         "read.max_query_length=16", "read.max_passage_length=16",
         "benchmark.exclude=[StdlibCodeRetrieval,LocalBrightTextRetrieval,LocalBrightDataRetrieval,"
         "LocalBrightToolingRetrieval,LocalBrightSystemRetrieval]")
    assert json.loads((out / "summary.json").read_text())["tasks"]
    assert not (hydra_dir / "summary.json").exists()


def test_hrsa_writes_to_out_not_the_hydra_dir(micro_backbone, corpus_dir, tmp_path):
    out, hydra_dir = tmp_path / "out", tmp_path / "hydra_dir"
    _run("reasoning_embed.hrsa", f"out={out}", f"hydra.run.dir={hydra_dir}",
         f"model_a.path={micro_backbone}", "model_a.tiny=null", "model_a.name=a",
         f"model_b.path={micro_backbone}", "model_b.tiny=null", "model_b.name=b", f"corpus_dir={corpus_dir}",
         "n_texts=20", "max_length=16", "level=pooled", "label_field=null", "stats.n_boot=0", "stats.n_perm=0",
         "figures=false", "progress=false", "knn.k=[5]")
    assert json.loads((out / "hrsa.json").read_text())["output_dir"] == str(out)
    assert not (hydra_dir / "hrsa.json").exists()
