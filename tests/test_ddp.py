"""Cross-device negatives: the 2-rank DDP gradient equals the single-process gradient of the global batch."""

import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import open_dict

from conftest import synthetic_rows, write_jsonl


class GradProbe(L.Callback):
    """Saves rank 0's gradients (after DDP's all-reduce) before the first optimizer step."""

    def __init__(self, path):
        self.path = str(path)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0 and trainer.is_global_zero:
            grads = {n: p.grad.detach().clone() for n, p in pl_module.encoder.named_parameters() if p.grad is not None}
            torch.save(grads, self.path)


def _grads(train_cfg, tmp_path, name, per_device, trainer_overrides, chunk_size=None):
    from reasoning_embed.train import train

    data = write_jsonl(tmp_path / "data" / "train.jsonl", synthetic_rows(32, negs=2))
    cfg = train_cfg(*trainer_overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
        cfg.data.offline_corpus = None
        cfg.data.train = str(data)
        cfg.data.val = None
        cfg.data.batch_size = per_device
        cfg.data.num_negatives = 3  # 2 real hard negatives, topped up to 3 by repetition
        cfg.trainer.max_steps = 1
        cfg.model.max_grad_norm = None
        cfg.model.chunk_size = chunk_size
        cfg.validate_before_training = False
        cfg.export = False
        cfg.callbacks.model_checkpoint = None
        cfg.extra_callbacks = {"probe": {"_target_": "test_ddp.GradProbe", "path": str(tmp_path / f"{name}.pt")}}
    train(cfg)
    return torch.load(tmp_path / f"{name}.pt")


@pytest.fixture
def dropout_backbone(micro_backbone, tmp_path):
    path = tmp_path / "dropout_bb"
    shutil.copytree(micro_backbone, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.3
    (path / "config.json").write_text(json.dumps(config))
    return path


def _assert_same(a, b, rel=1e-5):
    assert a.keys() == b.keys() and a
    for k in a:
        scale = b[k].abs().max().clamp(min=1e-12)
        assert ((a[k] - b[k]).abs().max() / scale).item() <= rel, k


@pytest.mark.slow
def test_ddp_two_ranks_equals_single_process_global_batch(train_cfg, tmp_path):
    single = _grads(train_cfg, tmp_path, "single", 8, [])
    ddp = _grads(train_cfg, tmp_path, "ddp", 4, ["trainer=ddp_spawn_cpu"])
    _assert_same(ddp, single)


@pytest.mark.slow
def test_ddp_with_grad_cache_equals_single_process_global_batch(train_cfg, tmp_path):
    single = _grads(train_cfg, tmp_path, "single", 8, [])
    ddp_cached = _grads(train_cfg, tmp_path, "ddp_cached", 4, ["trainer=ddp_spawn_cpu"], chunk_size=2)
    _assert_same(ddp_cached, single)


@pytest.mark.slow
def test_ddp_with_token_budget_chunks_equals_single_process_global_batch(train_cfg, tmp_path, micro_backbone):
    """Length-sorted token-budget chunks on 2 ranks (each rank plans its own, the counts agreed)."""
    from test_grad_cache import _budget_grads

    single = _grads(train_cfg, tmp_path, "single", 8, [])
    ddp_budget = _budget_grads(train_cfg, tmp_path, "ddp_budget", micro_backbone, ["trainer=ddp_spawn_cpu"],
                               per_device=4, chunk_tokens=48)
    _assert_same(ddp_budget, single)


@pytest.mark.slow
def test_ddp_token_budget_replays_dropout_masks(train_cfg, tmp_path, dropout_backbone):
    """Dropout on, 2 ranks: the cached step equals embedding the same planned chunks with graph."""
    from test_grad_cache import _budget_grads

    reference = _budget_grads(train_cfg, tmp_path, "ref", dropout_backbone, ["trainer=ddp_spawn_cpu"], per_device=4,
                              target="test_grad_cache.ChunkedWithGraph", chunk_tokens=48)
    cached = _budget_grads(train_cfg, tmp_path, "cached", dropout_backbone, ["trainer=ddp_spawn_cpu"], per_device=4,
                           chunk_tokens=48)
    _assert_same(cached, reference)
