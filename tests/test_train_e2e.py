"""The training entry point end to end through Hydra: run directory, export, metrics, resume."""

import json
import os
import subprocess
import sys

import torch

from conftest import ROOT, corpus_overrides, run_short_training


def test_train_cli_writes_a_complete_run_dir(micro_backbone, corpus_dir, tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "reasoning_embed.train", "debug=fast", f"hydra.run.dir={run_dir}",
         f"backbone.path={micro_backbone}", "backbone.tiny=null", f"paths.data_dir={corpus_dir.parent}",
         *corpus_overrides(corpus_dir), "data.mine_reference=null", "callbacks.progress=null", "eval.benchmark=local"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in (".hydra/config.yaml", "checkpoints/last.ckpt", "model/config.json", "model/modules.json",
                 "metrics.json", "data_report.json"):
        assert (run_dir / path).exists(), path
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["tokens_per_s"] > 0
    assert metrics["backbone_path"] == str(micro_backbone)  # what the report's backbone HRSA reads
    for key in ("val/ndcg@10", "val/recall@10", "val/mrr@10"):
        assert 0 <= metrics["final_val"][key] <= 1 and key in metrics["initial_val"]
    assert json.loads((run_dir / "model/config.json").read_text())["is_causal"] is False
    assert set(metrics["baselines"]) == {"bm25"}  # debug=fast; the default also scores minilm
    assert {k for k in metrics["final_val"] if not k.startswith("val/spread/")} == set(metrics["baselines"]["bm25"])
    local = metrics["eval"]["local"]  # evaluation at the end of training lands in metrics.json
    assert local["failed"] == [] and 0 <= local["mean_task"] <= 100 and (run_dir / "eval/local/summary.json").exists()
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "W&B offline run missing"
    history = list(offline_runs[0].glob("*.wandb"))
    assert history and history[0].stat().st_size > 0
    records = history[0].read_bytes()  # W&B's offline record log holds the history keys as plain strings
    assert b"hrsa/cka_vs_init" in records and b"hrsa/knn10_vs_init" in records and b"train/loss" in records

    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.encoder import build_encoder

    ours = build_encoder({"path": str(run_dir / "model")})
    st = SentenceTransformer(str(run_dir / "model"), device="cpu")
    texts = ["Return the absolute value of x.", "Parse a configuration file."]
    torch.testing.assert_close(ours.encode(texts), st.encode(texts, convert_to_tensor=True).cpu(),
                               atol=1e-5, rtol=1e-5)


def _run(train_cfg, out, *extra, stop_at=None, ckpt_path=None):
    return run_short_training(train_cfg, out, *extra, stop_at=stop_at, ckpt_path=ckpt_path)[0]


def test_resume_from_last_ckpt_ends_with_the_same_loss(train_cfg, tmp_path):
    straight = _run(train_cfg, tmp_path / "straight")
    stopped = _run(train_cfg, tmp_path / "resumed", stop_at=3)
    assert stopped["steps"] == 3
    resumed = _run(train_cfg, tmp_path / "resumed", ckpt_path="last")
    assert resumed["steps"] == straight["steps"] == 6
    assert abs(resumed["final_loss"] - straight["final_loss"]) < 1e-6, (resumed["final_loss"], straight["final_loss"])


def test_compose_every_backbone_and_trainer_config(train_cfg):
    from hydra.utils import instantiate

    for backbone in ("tiny_random", "tiny_base", "tiny_rlvr", "tiny_sft", "qwen_base", "qwen_rlvr", "qwen_sft", "qwen_instruct",
                     "qwen3_base", "qwen3_reason"):
        cfg = train_cfg(f"backbone={backbone}")
        assert cfg.backbone.name == backbone
    for trainer in ("cpu", "gpu", "ddp", "fsdp", "ddp_spawn_cpu"):
        cfg = train_cfg(f"trainer={trainer}")
        assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    cfg = train_cfg("trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    from reasoning_embed.training.strategies import FSDP2Strategy

    assert isinstance(strategy, FSDP2Strategy)
    cfg = train_cfg("finetune=lora")
    assert cfg.finetune.r == 16 and cfg.finetune.alpha == 32 and cfg.finetune.dropout == 0.1
    cfg = train_cfg("experiment=paper_recipe")
    assert cfg.model.temperature == 0.02 and cfg.model.optimizer.weight_decay == 0.05
    assert cfg.model.optimizer.lr == 2.0e-5 and cfg.model.warmup_ratio == 0.03 and cfg.model.max_grad_norm == 1.0
