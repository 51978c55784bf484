"""GradCache: the cached step's gradient equals the plain step's, also with dropout (masks replayed)."""

import json
import shutil

import pytest
import torch

from reasoning_embed.training import grad_cache
from reasoning_embed.training.module import ContrastiveModule
from test_ddp import _assert_same, _grads
from reasoning_embed import CONF_DIR


class ChunkedWithGraph(ContrastiveModule):
    """Reference for dropout: embed chunk by chunk *with* graph, in the order GradCache's first pass uses,
    so dropout consumes the random stream identically; then one ordinary backward."""

    def _plain_step(self, batch):
        c, group = 2, batch["group_size"]
        q = torch.cat([self.encoder(**f) for f in grad_cache.split_features(batch["query"], c)])
        p = torch.cat([self.encoder(**f) for f in grad_cache.split_features(batch["passages"], c * group)])
        loss, stats = self._loss(q, p, group)
        self.manual_backward(loss)
        return loss, stats


def test_cached_step_equals_uncached_step(train_cfg, tmp_path):
    plain = _grads(train_cfg, tmp_path, "plain", 8, [])
    cached = _grads(train_cfg, tmp_path, "cached", 8, [], chunk_size=2)
    _assert_same(cached, plain)


@pytest.fixture
def dropout_backbone(micro_backbone, tmp_path):
    path = tmp_path / "dropout_bb"
    shutil.copytree(micro_backbone, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.3
    (path / "config.json").write_text(json.dumps(config))
    return path


def _dropout_grads(train_cfg, tmp_path, name, dropout_backbone, chunk_size, target=None):
    from omegaconf import open_dict

    def make(*overrides):
        cfg = train_cfg(*overrides)
        with open_dict(cfg):
            cfg.backbone.path = str(dropout_backbone)
            if target:
                cfg.model._target_ = target
        return cfg

    return _grads(make, tmp_path, name, 8, [], chunk_size=chunk_size)


def test_dropout_masks_are_replayed(train_cfg, tmp_path, dropout_backbone):
    reference = _dropout_grads(train_cfg, tmp_path, "ref", dropout_backbone, None, "test_grad_cache.ChunkedWithGraph")
    cached = _dropout_grads(train_cfg, tmp_path, "cached", dropout_backbone, 2)
    _assert_same(cached, reference, rel=1e-5)


def test_without_replay_dropout_breaks_equality(train_cfg, tmp_path, dropout_backbone, monkeypatch):
    """The replay is what makes the previous test pass: disable it and the gradients differ."""
    reference = _dropout_grads(train_cfg, tmp_path, "ref", dropout_backbone, None, "test_grad_cache.ChunkedWithGraph")
    monkeypatch.setattr(grad_cache.RandomState, "__enter__", lambda self: self)
    monkeypatch.setattr(grad_cache.RandomState, "__exit__", lambda self, *exc: None)
    cached = _dropout_grads(train_cfg, tmp_path, "noreplay", dropout_backbone, 2)
    with pytest.raises(AssertionError):
        _assert_same(cached, reference, rel=1e-5)


def test_effective_recipe_is_logged(train_cfg, tmp_path, monkeypatch):
    from reasoning_embed.training import module as module_mod

    lines = []
    monkeypatch.setattr(module_mod.log, "info", lambda msg, *a: lines.append(msg % a if a else msg))
    _grads(train_cfg, tmp_path, "log", 8, [], chunk_size=2)
    line = next(x for x in lines if "effective recipe" in x)
    assert "global batch 8 queries (8 per device x 1 devices)" in line
    assert "chunk size 2" in line and "group 4 (1 positive + 3 hard negatives)" in line
    assert "against 32 passages" in line


def test_slurm_launcher_config_runs_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    from conftest import ROOT

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=2",
                                                       "hydra.launcher.gpus_per_node=4", "trainer=ddp",
                                                       "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == 4  # one task per GPU
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.strategy._target_.endswith("DDPStrategy")
