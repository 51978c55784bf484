"""FSDP2: the wrapping, the unsharded copy for rank-0 work, and two gloo ranks against one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group: enough for fully_shard and its collectives on a CPU."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _feats(encoder):
    return encoder.tokenizer.passages(["def f(x): return x + 1", "a longer passage about sorting lists in place"])


def test_decoder_layers_are_the_units(micro_encoder):
    from reasoning_embed.training.strategies import decoder_layers

    layers = decoder_layers(micro_encoder.backbone)
    assert len(layers) == micro_encoder.backbone.config.num_hidden_layers
    assert all(type(m).__name__ == "Qwen2DecoderLayer" for m in layers)


@pytest.mark.parametrize("lora", [False, True])
def test_sharded_encoder_runs_anywhere_and_full_copy_round_trips(micro_backbone, one_rank_group, lora):
    from torch.distributed.fsdp import FSDPModule

    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.training.strategies import full_encoder, is_sharded, shard_encoder

    finetune = {"mode": "lora", "r": 4, "alpha": 8, "dropout": 0.0} if lora else None
    enc = build_encoder({"path": str(micro_backbone), "name": "micro"}, max_query_length=32, max_passage_length=48,
                        finetune=finetune)
    enc.eval()
    feats = _feats(enc)
    with torch.no_grad():
        before = enc(**feats)
    reference = {k: v.detach().clone() for k, v in enc.backbone.state_dict().items()}
    shard_encoder(enc)
    shard_encoder(enc)  # idempotent: Lightning configures the model once per stage
    assert is_sharded(enc) and isinstance(enc.backbone, FSDPModule)
    assert sum(isinstance(m, FSDPModule) for m in enc.modules()) == enc.backbone.config.num_hidden_layers + 1
    with torch.no_grad():
        sharded_out = enc(**feats)  # a call outside any training step: the root unit gathers embeddings and norm
    plain = full_encoder(enc)
    assert not is_sharded(plain)
    state = plain.backbone.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    with torch.no_grad():
        after = plain(**feats)
    torch.testing.assert_close(sharded_out, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)
    assert plain.backbone.config.is_causal is False


def test_unsharded_encoder_is_returned_as_is(micro_encoder):
    from reasoning_embed.training.strategies import full_encoder

    assert full_encoder(micro_encoder) is micro_encoder


def test_fsdp_trainer_config_builds_the_fsdp2_strategy(train_cfg):
    from hydra.utils import instantiate

    from reasoning_embed.training.strategies import FSDP2Strategy

    for name in ("fsdp", "fsdp_cpu"):
        strategy = instantiate(train_cfg(f"trainer={name}").trainer.strategy)
        assert isinstance(strategy, FSDP2Strategy)
    with pytest.raises(ValueError, match="state_dict_type"):
        FSDP2Strategy(state_dict_type="local")


def test_a_gloo_process_group_is_destroyed_before_the_interpreter_exits(tmp_path):
    """Lightning destroys NCCL groups at exit only; a gloo rank exiting with its group alive can abort in
    interpreter finalisation (SIGABRT, pytorch/pytorch#190489), which failed a finished two-rank run here once.
    Every rank's fit starts with the module's ``on_fit_start``, spawned ranks included."""
    script = f"""
import atexit
import torch
import torch.distributed as dist
from reasoning_embed.training.module import ContrastiveModule
module = ContrastiveModule(torch.nn.Linear(2, 2), optimizer=None)
module.on_fit_start()  # no group (one process): nothing to destroy, no error
dist.init_process_group("gloo", init_method="file://{tmp_path / 'pg'}", rank=0, world_size=1)
atexit.register(lambda: print("alive" if dist.is_initialized() else "destroyed"))  # registered first, runs last
module.on_fit_start()
module.on_fit_start()  # again, as a second fit in the same process would: no error
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["destroyed"]


def _check(tmp_path, name, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "fsdp_check.py"), "--out", str(tmp_path / name), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path / name


@pytest.mark.slow
def test_fsdp_two_gloo_ranks_with_grad_cache_equal_one_process(micro_backbone, tmp_path):
    """Two optimizer steps, global batch 8: one process (uncached) vs FSDP2 on two CPU ranks with gradient
    caching (chunks of 2), validation and the HRSA callback every step, export at the end."""
    bb = ["--backbone", str(micro_backbone)]
    single = _check(tmp_path, "single", *bb, "--strategy", "single")
    fsdp = _check(tmp_path, "fsdp", *bb, "--strategy", "fsdp", "--devices", "2", "--chunk", "2")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fsdp_check.py"), "--compare", str(single),
                          str(fsdp)], capture_output=True, text=True, timeout=120, check=True)
    diff = json.loads(out.stdout.strip().splitlines()[-1])
    print(diff)  # the figures (pytest -s)
    assert diff["world_size"] == 2 and diff["sharded"] and diff["steps"] == 2
    assert diff["grad_max_rel"] < 1e-4
    assert diff["exported_weight_max_rel"] < 1e-5
    assert diff["val_max_abs"] < 1e-5 and diff["hrsa_max_abs"] < 1e-5 and diff["embedding_max_rel"] < 1e-5
