"""Every experiment config composes; a 2-job multirun runs; the report reads the sweep."""

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from conftest import ROOT, corpus_overrides
from reasoning_embed import CONF_DIR

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_config)


def test_defaults_are_the_paper_recipe(monkeypatch):
    """What a researcher types for a real run gets the paper's recipe, not the offline toy's settings."""
    import torch

    from reasoning_embed.training.module import ContrastiveModule

    cfg = _compose("backbone=qwen_base", "data=jsonl", "data.train=/data/train.jsonl")
    assert cfg.get("experiment") is None and cfg.backbone.path == "Qwen/Qwen2.5-1.5B"
    opt, model, enc = cfg.model.optimizer, cfg.model, cfg.encoder
    assert opt._target_ == "torch.optim.AdamW" and opt.lr == 2.0e-5 and opt.weight_decay == 0.05
    assert model.warmup_ratio == 0.03 and model.max_grad_norm == 1.0 and model.temperature == 0.02
    assert cfg.trainer.max_epochs == 1 and cfg.trainer.max_steps == -1  # one epoch
    assert cfg.data.num_negatives == 3  # 1 positive + 3 hard negatives
    assert enc.pooling == "mean" and enc.normalize and enc.attention == "bidirectional"
    assert enc.query_template == "Instruct: {instruction}\nQuery: " and enc.add_special_tokens is False
    assert enc.max_query_length == 512 and enc.max_passage_length == 512
    assert cfg.finetune.mode == "full" and cfg.seed == 42
    assert cfg.trainer.accelerator == "auto"
    assert cfg.trainer.precision == "32-true"  # this machine has no GPU ...
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert cfg.trainer.precision == "bf16-mixed"  # ... on one with bf16, the recipe's mixed precision
    # the schedule: linear warm-up over 3% of the steps, then cosine to zero
    module = ContrastiveModule(torch.nn.Linear(2, 2), lambda params: torch.optim.AdamW(params, lr=opt.lr),
                               warmup_ratio=model.warmup_ratio)
    module._trainer = type("T", (), {"estimated_stepping_batches": 1000})()
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(1000):
        lrs.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    assert max(lrs) == pytest.approx(2.0e-5) and lrs[0] < 2.0e-5 / 10 and lrs.index(max(lrs)) in (29, 30)
    assert lrs[515] == pytest.approx(1.0e-5, rel=0.02) and lrs[-1] < 1e-9


def test_embedding_lr_scale_gives_the_token_embeddings_their_own_learning_rate():
    import torch

    from reasoning_embed.training.module import ContrastiveModule

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens, self.proj = torch.nn.Embedding(5, 2), torch.nn.Linear(2, 2)

    def groups(scale):
        module = ContrastiveModule(Tiny(), lambda params: torch.optim.AdamW(params, lr=1e-4), embedding_lr_scale=scale)
        module._trainer = type("T", (), {"estimated_stepping_batches": 100})()
        sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
        return [(sum(p.numel() for p in g["params"]), g["initial_lr"]) for g in sched.optimizer.param_groups]

    assert groups(1.0) == [(16, pytest.approx(1e-4))]  # the recipe: one group
    assert groups(30.0) == [(6, pytest.approx(1e-4)), (10, pytest.approx(3e-3))]


def test_recipe_line_names_what_differs_from_the_paper():
    from reasoning_embed.training.recipe import recipe_differences, recipe_line

    paper = _compose("backbone=qwen_base", "data=jsonl", "data.train=/data/train.jsonl", "trainer.precision=bf16-mixed",
                     "data.batch_size=256")
    assert recipe_differences(paper, world_size=8) == {}
    assert recipe_line({}) == "recipe vs the paper: unchanged"
    toy = _compose("experiment=offline_default")
    diffs = recipe_differences(toy)
    assert diffs["model.optimizer.lr"] == (1.0e-4, 2.0e-5) and diffs["model.temperature"] == (0.1, 0.02)
    assert diffs["model.embedding_lr_scale"] == (30.0, 1.0)
    assert diffs["encoder.max_query_length"] == (64, 512) and diffs["trainer.max_steps"] == (300, -1)
    assert diffs["trainer.max_epochs"] == (2, 1)
    assert diffs["trainer.precision"] == ("32-true", "bf16-mixed") and diffs["global batch"] == (32, 2048)
    assert "data.file_weights" not in diffs
    weighted = recipe_differences(_compose("experiment=offline_default", "data.file_weights={docstring:2}"))
    assert weighted["data.file_weights"] == ({"docstring": 2}, None) and type(weighted["data.file_weights"][0]) is dict
    line = recipe_line(diffs)
    assert "model.optimizer.lr=0.0001 (paper 2e-05)" in line and "model.temperature=0.1 (paper 0.02)" in line


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
        assert cfg.data.mine_reference == "minilm" and cfg.data.train is None  # null: the prepared (mined) corpus
        assert cfg.data.prepare._target_ == "reasoning_embed.assets.prepare_offline_corpus"
    if name == "tiny_pairs":
        assert str(params["backbone"]) == "tiny_base,tiny_rlvr,tiny_sft" and str(params["finetune"]) == "full"
        assert len(str(params["seed"]).split(",")) >= 6  # the sign-flip test over seeds can reach p < 0.05
        # the study's recorded figures are at these settings (make train's recipe, 1 hard negative, 180 steps)
        assert cfg.model.temperature == 0.1 and cfg.model.optimizer.lr == 1.0e-4 and cfg.trainer.max_steps == 180
        assert cfg.model.embedding_lr_scale == 30.0 and cfg.data.batch_size == 32 and cfg.data.num_negatives == 1
        assert cfg.trainer.val_check_interval == 180 and cfg.callbacks.model_checkpoint.every_n_train_steps == 180


# what each experiment's end-of-run evaluation needs from the network: offline, only `local` runs
_OFFLINE_BENCHMARKS = {"local"}


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_starts(name, micro_backbone, corpus_dir, tmp_path, monkeypatch):
    """Each experiment trains 2 steps, validates and exports, with only the backbone, the data and the trainer's
    limits (steps, this machine's device) replaced: a broken interpolation or key shows here, not on a cluster."""
    from omegaconf import open_dict

    from reasoning_embed.train import train

    monkeypatch.setenv("RE_TRAIN_DATA", str(corpus_dir / "train"))
    cfg = _compose(f"experiment={name}", "logger=none")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run")
        # backbone: the micro model instead of a hub id
        cfg.backbone.path, cfg.backbone.tiny = str(micro_backbone), None
        cfg.encoder.corpus_dir = str(corpus_dir)
        # data: the fixture corpus, a handful of queries
        cfg.data.offline_corpus, cfg.data.mine_reference = str(corpus_dir), None
        cfg.data.train, cfg.data.val = str(corpus_dir / "train"), str(corpus_dir / "val")
        cfg.data.batch_size, cfg.data.val_max_queries = 4, 8
        # trainer limits: 2 steps, one CPU process
        cfg.trainer.max_steps, cfg.trainer.val_check_interval = 2, 2
        cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32-true"
        cfg.trainer.pop("strategy", None)
        benchmarks = cfg.eval.benchmark
        if benchmarks is not None and not set([benchmarks] if isinstance(benchmarks, str) else benchmarks) <= _OFFLINE_BENCHMARKS:
            cfg.eval.benchmark = None  # MTEB / BRIGHT need their datasets (tested in the evaluation tests)
    metrics = train(cfg)
    assert metrics["steps"] == 2 and (tmp_path / "run" / "model" / "modules.json").exists()
    assert 0 <= metrics["final_val"]["val/ndcg@10"] <= 1


def test_multirun_with_a_failing_job_and_report(micro_backbone, corpus_dir, tmp_path):
    """A sweep in which half the jobs fail (a backbone that is not there) still runs every job; the failed ones
    leave failed.json and the report lists them."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "reasoning_embed.train", "-m", "debug=fast", "logger=csv", "seed=1,2",
         f"hydra.sweep.dir={sweep}", f"backbone.path={tmp_path}/no_such_model,{micro_backbone}", "backbone.tiny=null",
         *corpus_overrides(corpus_dir), "data.mine_reference=null", "callbacks.progress=null", "export=false"],
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
