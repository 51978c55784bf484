"""Manifold realignment, live: the HRSA callback during training, and the cross-run realign tool."""

import json
import shutil

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from reasoning_embed.training.hrsa_callback import load_features
from reasoning_embed import CONF_DIR

KEYS = {"step", "n_probe", "cka_vs_init", "cka_debiased_vs_init", "knn10_vs_init"}


def _train(train_cfg, out, *overrides, **hrsa):
    from reasoning_embed.train import train

    cfg = train_cfg("trainer.max_steps=4", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.validate_before_training = False
        cfg.export = False
        cfg.data.val_max_queries = 8
        cfg.callbacks.model_checkpoint = None
        for k, v in hrsa.items():
            cfg.callbacks.hrsa[k] = v
    train(cfg)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, micro_backbone, corpus_dir):
    # a module-scoped run shared by several tests (the train_cfg fixture is function-scoped: compose here)
    from hydra import compose, initialize_config_dir

    from conftest import ROOT
    from reasoning_embed.train import train

    out = tmp_path_factory.mktemp("hrsa_run") / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["debug=fast", "logger=csv", "trainer.max_steps=4"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.data.offline_corpus = str(corpus_dir)
        cfg.data.mine_reference = None
        cfg.data.train, cfg.data.val = str(corpus_dir / "train"), str(corpus_dir / "val")
        cfg.data.val_max_queries = 8
        cfg.encoder.corpus_dir = str(corpus_dir)
        cfg.backbone.path, cfg.backbone.tiny = str(micro_backbone), None
        cfg.callbacks.progress = None
        cfg.validate_before_training = False
        cfg.export = False
    train(cfg)
    return out


def test_fires_at_step_zero_and_interval_with_documented_keys(trained_run):
    lines = (trained_run / "hrsa" / "realignment.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["step"] for r in records] == [0, 2, 4]
    for r in records:
        assert KEYS <= set(r)
    assert records[0]["cka_vs_init"] == pytest.approx(1.0, abs=1e-12)
    assert records[0]["knn10_vs_init"] == 1.0
    assert records[-1]["cka_vs_init"] < 1.0  # training moved the representation


def test_saved_features_reload_identically(trained_run):
    f0 = load_features(trained_run / "hrsa" / "features" / "step_0.safetensors")["embeddings"]
    assert f0.shape == (32, 32) and f0.dtype == torch.float32
    again = load_features(trained_run / "hrsa" / "features" / "step_0.safetensors")["embeddings"]
    assert torch.equal(f0, again)
    from reasoning_embed.hrsa import linear_cka

    f4 = load_features(trained_run / "hrsa" / "features" / "step_4.safetensors")["embeddings"]
    rec = json.loads((trained_run / "hrsa" / "realignment.jsonl").read_text().splitlines()[-1])
    assert linear_cka(f4, f0) == pytest.approx(rec["cka_vs_init"], abs=1e-9)


def test_series_reach_the_logger(trained_run):
    header = (trained_run / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "hrsa/cka_vs_init" in header and "hrsa/knn10_vs_init" in header


def test_reference_run_and_layerwise(train_cfg, trained_run, tmp_path):
    out = _train(train_cfg, tmp_path / "partner", reference_run=str(trained_run), layerwise=True)
    rec = [json.loads(x) for x in (out / "hrsa" / "realignment.jsonl").read_text().splitlines()]
    assert all("cka_vs_ref" in r and "knn10_vs_ref" in r for r in rec)
    assert rec[0]["cka_vs_ref"] == pytest.approx(1.0, abs=1e-9)  # same init, same probe set
    assert "cka_layer_0_vs_init" in rec[-1] and "cka_layer_2_vs_init" in rec[-1]


def test_realign_run_with_itself_is_one(trained_run, tmp_path):
    from reasoning_embed.realign import realign_pair

    res = realign_pair(trained_run, trained_run, tmp_path / "self", n_perm=20)
    assert res["steps"] == [0, 2, 4]
    for row in res["series"]:
        assert row["a_vs_b"]["cka"] == pytest.approx(1.0, abs=1e-9)
        assert row["a_vs_b"]["knn"] == pytest.approx(1.0)
        assert row["a_vs_b"]["dimcorr"] == pytest.approx(1.0, abs=1e-9)
    assert (tmp_path / "self" / "realignment.png").stat().st_size > 1000
    assert json.loads((tmp_path / "self" / "realignment.json").read_text())["k"] == 10


def _fake_run(src, dst, backbone, base, seed, finetune="full"):
    shutil.copytree(src / "hrsa", dst / "hrsa")
    (dst / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": seed, "finetune": {"mode": finetune}, "data": {"train": "d"},
                                     "backbone": {"name": backbone, "base": base}}), dst / ".hydra" / "config.yaml")


def test_realign_pairs_sweep_runs_that_differ_only_in_backbone(trained_run, tmp_path):
    from reasoning_embed.realign import pair_sweep_runs

    sweep = tmp_path / "sweep"
    _fake_run(trained_run, sweep / "0_base_s1", "tiny_base", "tiny_base", 1)
    _fake_run(trained_run, sweep / "1_rlvr_s1", "tiny_rlvr", "tiny_base", 1)
    _fake_run(trained_run, sweep / "2_sft_s1", "tiny_sft", "tiny_base", 1)
    _fake_run(trained_run, sweep / "3_rlvr_s2", "tiny_rlvr", "tiny_base", 2)       # no base at seed 2
    _fake_run(trained_run, sweep / "4_base_lora", "tiny_base", "tiny_base", 1, "lora")
    pairs = {(a.name, b.name) for a, b in pair_sweep_runs(sweep)}
    assert pairs == {("0_base_s1", "1_rlvr_s1"), ("0_base_s1", "2_sft_s1")}


def test_realign_cli_on_a_sweep(trained_run, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    sweep = tmp_path / "sweep"
    _fake_run(trained_run, sweep / "0_base", "tiny_base", "tiny_base", 1)
    _fake_run(trained_run, sweep / "1_rlvr", "tiny_rlvr", "tiny_base", 1)
    out = tmp_path / "realign"
    env = {**__import__("os").environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "reasoning_embed.realign", f"sweep={sweep}", f"out={out}",
                           "n_perm=10"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "0_base__vs__1_rlvr" / "realignment.json").exists()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert runs and any(p.stat().st_size > 0 for p in runs[0].glob("*.wandb"))


@pytest.mark.slow
def test_ddp_logs_once_with_all_probe_rows(train_cfg, tmp_path):
    out = _train(train_cfg, tmp_path / "ddp", "trainer=ddp_spawn_cpu", n_probe=30)  # 30 rows: uneven shards
    records = [json.loads(x) for x in (out / "hrsa" / "realignment.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 2, 4]
    assert all(r["n_probe"] == 30 for r in records)
    assert records[0]["cka_vs_init"] == pytest.approx(1.0, abs=1e-12)
    # the rows gathered from both ranks are in probe order: step 0 equals a single-process run's step 0
    single = _train(train_cfg, tmp_path / "single", n_probe=30)
    s0 = load_features(single / "hrsa" / "features" / "step_0.safetensors")["embeddings"]
    f0 = load_features(out / "hrsa" / "features" / "step_0.safetensors")["embeddings"]
    torch.testing.assert_close(f0, s0, atol=1e-5, rtol=1e-5)


def test_reference_model_takes_a_run_directory(train_cfg, micro_encoder, tmp_path):
    """reference_model= goes through the one loader: a run directory (its export) works, not only a model dir."""
    from reasoning_embed.models.export import export_encoder

    ref_run = tmp_path / "ref_run"
    export_encoder(micro_encoder, ref_run / "model")
    out = _train(train_cfg, tmp_path / "with_ref", reference_model=str(ref_run))
    rec = [json.loads(x) for x in (out / "hrsa" / "realignment.jsonl").read_text().splitlines()]
    assert all("cka_vs_ref" in r and 0.0 <= r["cka_vs_ref"] <= 1.0 + 1e-9 for r in rec)
