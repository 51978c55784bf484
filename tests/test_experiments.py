"""Every experiment config composes; a 2-job multirun runs; the report reads the sweep."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT
from reasoning_embed import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_config_composes(name, monkeypatch):
    monkeypatch.setenv("RE_TRAIN_DATA", "/data/train")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={name}"], return_hydra_config=True)
    assert cfg.model.temperature > 0 and cfg.backbone.name
    params = cfg.hydra.sweeper.params or {}
    if name.startswith("paper_") or name == "lora_vs_full":
        assert cfg.model.optimizer.lr == 2.0e-5 and cfg.model.temperature == 0.02  # the paper's recipe
    if name in ("paper_qwen25", "paper_qwen3", "lora_vs_full"):
        assert len(str(params["seed"]).split(",")) == 3
        assert "bright" in list(cfg.eval.benchmark)
    if name in ("offline_default", "tiny_pairs"):  # make train / make study-tiny train on the mined corpus
        assert cfg.data.mine_reference == "minilm" and cfg.data.train.endswith("stdlib_mined/train")
    if name == "tiny_pairs":
        assert str(params["backbone"]) == "tiny_base,tiny_rlvr,tiny_sft" and str(params["finetune"]) == "full,lora"


def test_multirun_with_a_failing_job_and_report(micro_backbone, corpus_dir, tmp_path):
    """A sweep in which half the jobs fail (a backbone that is not there) still runs every job; the failed ones
    leave failed.json and the report lists them."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reasoning_embed.train", "-m", "debug=fast", "logger=csv", "seed=1,2",
         f"hydra.sweep.dir={sweep}", f"backbone.path={tmp_path}/no_such_model,{micro_backbone}", "backbone.tiny=null",
         f"data.offline_corpus={corpus_dir}", "data.mine_reference=null", f"data.train={corpus_dir}/train",
         f"data.val={corpus_dir}/val", f"encoder.corpus_dir={corpus_dir}", "callbacks.progress=null", "export=false"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode != 0  # the sweep reports its failures ...
    runs = sorted(p.parent.parent for p in sweep.glob("*/.hydra/config.yaml"))
    assert len(runs) == 4  # ... after running every job
    ok = [r for r in runs if (r / "metrics.json").exists()]
    failed = [r for r in runs if (r / "failed.json").exists()]
    assert len(ok) == 2 and len(failed) == 2
    assert {json.loads((r / "metrics.json").read_text())["seed"] for r in ok} == {1, 2}
    assert all("no_such_model" in json.loads((r / "failed.json").read_text())["error"] for r in failed)
    proc = subprocess.run([sys.executable, "-m", "reasoning_embed.report", f"sweep={sweep}", "wandb=false"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = (sweep / "report" / "table.md").read_text()
    assert "val_ndcg@10/Mean(Task)" in md and md.count("no_such_model") >= 2
