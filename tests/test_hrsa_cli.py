"""``python -m reasoning_embed.hrsa`` end to end, offline, on the micro backbone: hrsa.json, figures,
self-comparison identities, attention modes, a trained-run export, and the tokenizer-mismatch error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from reasoning_embed.errors import TokenizerMismatchError
from reasoning_embed import CONF_DIR

FIGURES = {"cka_biased.png", "cka_debiased.png", "dimcorr.png", "knn_overlap.png", "procrustes.png",
           "alignment_matrix.png", "probe_transfer.png", "calibrated.png"}


pytestmark = pytest.mark.usefixtures("one_thread")


def small(path_a, path_b, corpus_dir, *extra) -> list[str]:
    """Overrides that shrink a run to a few CPU-seconds on the micro backbone."""
    return [f"model_a.path={path_a}", "model_a.tiny=null", "model_a.name=micro_a",
            f"model_b.path={path_b}", "model_b.tiny=null", "model_b.name=micro_b",
            f"corpus_dir={corpus_dir}", "n_texts=80", "max_length=32", "batch_size=16", "max_sample=1500",
            "knn.k=[5,10]", "knn.max_rows=600", "stats.n_boot=20", "stats.n_perm=20", "stats.layers=all",
            "stats.tokens_per_text=4", "probe.min_per_class=4", "progress=false", *extra]


@pytest.fixture
def hrsa_cfg(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    def make(*overrides: str, out=None):
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="hrsa", overrides=list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(out or tmp_path / "hrsa")
            cfg.cache.dir = str(tmp_path / "feature_cache")
        return cfg

    return make


def test_default_config_composes_with_backbone_groups(hrsa_cfg):
    cfg = hrsa_cfg()
    assert (cfg.model_a.name, cfg.model_b.name, cfg.texts, cfg.level) == ("tiny_base", "tiny_rlvr", "builtin", "token")
    assert cfg.model_a.attention == cfg.model_b.attention == "auto" and cfg.model_b.tiny.variant == "rlvr"
    cfg = hrsa_cfg("model_a=tiny_sft", "model_b=qwen_base", "model_b.attention=bidirectional")
    assert cfg.model_a.name == "tiny_sft" and cfg.model_b.path == "Qwen/Qwen2.5-1.5B"
    assert cfg.model_b.attention == "bidirectional"


def test_model_against_itself(hrsa_cfg, micro_backbone, corpus_dir, tmp_path):
    from reasoning_embed.hrsa.pipeline import run_hrsa

    out = tmp_path / "self"
    rep = run_hrsa(hrsa_cfg(*small(micro_backbone, micro_backbone, corpus_dir), out=out))
    disk = json.loads((out / "hrsa.json").read_text())
    assert disk["cka"] == json.loads(json.dumps(rep["cka"]))
    assert FIGURES <= set(disk["figures"]) and all((out / f).stat().st_size > 0 for f in FIGURES)

    L = 3                                                   # embedding output + 2 blocks
    assert disk["layers"]["model_a"] == disk["layers"]["model_b"] == [0, 1, 2]
    assert disk["attention"] == {"model_a": "causal", "model_b": "causal"}
    assert disk["models"]["model_a"]["attention_source"].startswith("auto")
    assert disk["models"]["model_b"]["same_model_object_as_a"] is True
    assert disk["level"] == "token" and disk["d"] == {"model_a": 32, "model_b": 32}
    n = disk["n"]
    assert disk["n_texts"] == n["texts_used"] == 80 and disk["n_tokens"] == n["tokens_kept"] == disk["cka"]["n_rows"]
    assert 0 < n["sample_rows"] <= 1500 and n["knn_rows"] == 600 and n["sample_rows"] < n["tokens_kept"]

    for key in ("biased", "debiased"):
        M = torch.tensor(disk["cka"][key])
        assert M.shape == (L, L)
        torch.testing.assert_close(torch.diagonal(M), torch.ones(L, dtype=M.dtype), atol=1e-8, rtol=0)
        torch.testing.assert_close(M, M.T, atol=1e-8, rtol=0)
    assert torch.tensor(disk["dimcorr"]["mean"]).shape == (L, L)
    assert all(abs(d["mean"] - 1) < 1e-9 for d in disk["dimcorr"]["diagonal"])
    for p in disk["knn"]["per_layer"]:
        assert p["jaccard"] == {"5": 1.0, "10": 1.0} and p["chance_jaccard"]["5"] < 0.05
    for p in disk["procrustes"]["per_layer"]:
        assert p["cosine_test"] > 0.999 and p["rvr_test"] < 1e-6 and p["inverse_row_entropy"] > 0.99
        assert p["inverse_row_entropy"] > p["random_rotation_baseline"]
    assert disk["procrustes"]["texts_fit"] + disk["procrustes"]["texts_test"] == n["sample_texts"]

    stats = disk["stats"]
    assert len(stats["per_layer"]) == L and stats["n_boot"] == stats["n_perm"] == 20
    last = stats["per_layer"][-1]
    assert last["cka"]["biased"]["p_value"] == pytest.approx(1 / 21)            # identical inputs: minimal p
    assert last["knn_jaccard"]["5"]["estimate"] == 1.0 and last["knn_jaccard"]["5"]["p_value"] == pytest.approx(1 / 21)
    assert last["cka"]["debiased"]["low"] <= 1.0 + 1e-9
    assert last["knn_mutual"]["5"]["low"] == last["knn_mutual"]["5"]["high"] == 1.0      # interval of mutual too
    biased, deb = last["cka"]["biased"], last["cka"]["debiased"]
    assert biased["target"] == "expected at this n" and deb["target"] == "population"
    assert biased["population"]["low"] == deb["low"] and biased["population"]["high"] == deb["high"]
    # identical inputs: every calibrated score is 1 (observed = smax above the permutation threshold)
    assert last["cka"]["biased"]["calibrated"]["score"] == pytest.approx(1.0)
    assert last["knn_jaccard"]["5"]["calibrated"]["score"] == pytest.approx(1.0)
    assert last["knn_mutual"]["5"]["calibrated"]["score"] == pytest.approx(1.0)
    assert last["dimcorr"]["calibrated"]["score"] == pytest.approx(1.0, abs=1e-6)
    search = stats["layer_search"]               # calibrated with one permutation shared by all layers
    assert search["max"]["score"] == pytest.approx(1.0) and search["max"]["p_value"] == pytest.approx(1 / 21)
    assert 0 < search["mean"]["score"] <= 1 and search["mean"]["p_value"] == pytest.approx(1 / 21)

    probe = disk["probe"]
    assert probe["native"] == probe["raw_transfer"] == probe["b_own"] == probe["aligned_transfer"]
    assert {"chance", "shuffled", "n_test", "classes"} <= set(probe)
    mass = disk["massive_activations"]
    assert [m["layer"] for m in mass["model_a"]] == [0, 1, 2] and "max_ratio" in mass["model_b"][0]
    assert disk["config"]["model_a"]["path"] == str(micro_backbone) and disk["timing_s"]["total"] > 0


def test_tokenizer_mismatch_error_and_pooled_fallback(hrsa_cfg, micro_backbone, corpus_dir, tmp_path, capsys):
    from reasoning_embed.hrsa.pipeline import run_hrsa
    from reasoning_embed.models.tiny import build_tiny_backbone
    from reasoning_embed.utils.hydra_utils import user_errors_exit

    other = build_tiny_backbone(tmp_path / "micro512", corpus_dir, seed=3, vocab_size=512, hidden_size=32,
                                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                intermediate_size=64)
    overrides = small(micro_backbone, other, corpus_dir, "n_texts=40")
    with pytest.raises(TokenizerMismatchError, match=r"(?s)micro_a and micro_b.*level=pooled"):
        run_hrsa(hrsa_cfg(*overrides, out=tmp_path / "tok"))
    with pytest.raises(SystemExit) as exit_info:                       # what the CLI prints: one line, exit 2
        user_errors_exit(run_hrsa)(hrsa_cfg(*overrides, out=tmp_path / "tok"))
    assert exit_info.value.code == 2 and "level=pooled" in capsys.readouterr().err
    assert not (tmp_path / "tok" / "hrsa.json").exists()

    rep = run_hrsa(hrsa_cfg(*overrides, "level=pooled", "figures=false", out=tmp_path / "pooled"))
    assert rep["level"] == "pooled" and rep["tokenizers"]["same_ids_on_texts"] is False
    assert rep["cka"]["n_rows"] == rep["n_texts"] == 40 and rep["n"]["tokens_kept_b"] != rep["n_tokens"]
    assert rep["models"]["model_b"]["tokenizer_vocab_size"] == 512
    assert (tmp_path / "pooled" / "hrsa.json").exists() and "figures" not in rep


@pytest.mark.slow
def test_cli_subprocess_with_an_embedding_model_export(micro_backbone, corpus_dir, tmp_path):
    """One real ``python -m`` run: Hydra entry point, out=DIR, model B an exported embedding model.

    The export is the micro backbone with ``is_causal: false`` in config.json, which is what a trained
    run's ``model/`` says (tests/test_train_e2e.py checks that and that the encoder loads such a dir).
    """
    export = tmp_path / "run" / "model"
    shutil.copytree(micro_backbone, export)
    cfg = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**cfg, "is_causal": False}))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([sys.executable, "-m", "reasoning_embed.hrsa", f"out={out}", "stats.layers=last",
                           *small(micro_backbone, export, corpus_dir, "n_texts=40", "label_field=null",
                                  "figures=false")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((out / "hrsa.json").read_text())
    assert rep["attention"] == {"model_a": "causal", "model_b": "bidirectional"}
    assert "is_causal=false" in rep["models"]["model_b"]["attention_source"]
    assert (out / ".hydra" / "config.yaml").exists() and (out / "hrsa.log").exists()
    assert rep["output_dir"] == str(out) and "skipped" in rep["probe"]
    # same weights, different attention: the embedding layer agrees exactly, deeper layers do not
    cka = torch.tensor(rep["cka"]["biased"])
    assert cka[0, 0] == pytest.approx(1.0, abs=1e-8) and cka[-1, -1] < 1.0 - 1e-6


def test_progress_covers_the_layer_search_null(hrsa_cfg, micro_backbone, corpus_dir, tmp_path, capfd):
    """With progress on, the L x L permutation null of the layer search shows its own bar (it is the longest
    step of a real-size run)."""
    from reasoning_embed.hrsa.pipeline import run_hrsa

    overrides = [o for o in small(micro_backbone, micro_backbone, corpus_dir) if o != "progress=false"]
    run_hrsa(hrsa_cfg(*overrides, "progress=true", "stats.n_boot=0", "stats.n_perm=5", out=tmp_path / "p"))
    assert "hrsa CKA null" in capfd.readouterr().err
