"""The assets layer: built-on-first-use artefacts keyed by the hash of their full spec."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file

from conftest import MICRO
from reasoning_embed.assets import build_once, spec_hash, tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"variant": "random", "foundry": False, "seed": 0, **MICRO, "tokenizer": "bpe"}


def test_changed_seed_or_size_never_returns_the_old_cache(corpus_dir, tmp_path):
    """Regression: backbone.tiny.seed=7 or another hidden_size used to return the cached model of the
    first spec (the cache key was "the directory exists")."""
    path = tmp_path / "backbones" / "tiny_random"
    first = tiny_backbone(path, TINY, corpus_dir)
    assert tiny_backbone(path, TINY, corpus_dir) == first  # the same spec: the cache
    seven = tiny_backbone(path, {**TINY, "seed": 7}, corpus_dir)
    wider = tiny_backbone(path, {**TINY, "hidden_size": 48}, corpus_dir)
    assert len({first, seven, wider}) == 3
    w0, w7 = load_file(first / "model.safetensors"), load_file(seven / "model.safetensors")
    assert any(not (w0[k] == w7[k]).all() for k in w0)
    assert json.loads((wider / "config.json").read_text())["hidden_size"] == 48
    assert json.loads((first / "config.json").read_text())["hidden_size"] == MICRO["hidden_size"]
    assert json.loads((seven / "asset.json").read_text())["spec"]["seed"] == 7


def test_residual_init_scale_scales_only_the_block_outputs_and_keys_its_own_cache(corpus_dir, tmp_path):
    path = tmp_path / "backbones" / "tiny_random"
    plain = tiny_backbone(path, TINY, corpus_dir)
    scaled = tiny_backbone(path, {**TINY, "residual_init_scale": 0.1}, corpus_dir)
    assert scaled != plain and "init" not in json.loads((plain / "asset.json").read_text())["spec"]
    w, s = load_file(plain / "model.safetensors"), load_file(scaled / "model.safetensors")
    for k in w:  # the same seed: every weight equal, the blocks' output projections at 0.1 x
        factor = 0.1 if k.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
        assert (s[k] - factor * w[k]).abs().max() < 1e-7, k
    assert any(k.endswith("o_proj.weight") for k in w) and any(k.endswith("down_proj.weight") for k in w)


def test_a_moved_checkout_reuses_its_caches(corpus_dir, tmp_path):
    """Cache keys hold identities (package and library versions, corpus manifest), never absolute paths."""
    root_a = tmp_path / "a"
    shutil.copytree(corpus_dir, root_a / "data" / "stdlib")
    built = tiny_backbone(root_a / "backbones" / "tiny_random", TINY, root_a / "data" / "stdlib")
    stamp = (built / "model.safetensors").stat().st_mtime_ns
    root_b = tmp_path / "b"
    shutil.move(str(root_a), str(root_b))
    again = tiny_backbone(root_b / "backbones" / "tiny_random", TINY, root_b / "data" / "stdlib")
    assert again == root_b / "backbones" / built.name
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp  # found, not rebuilt
    assert str(tmp_path) not in (again / "asset.json").read_text()


def test_another_version_of_a_numeric_library_builds_its_own_copy(corpus_dir, tmp_path, monkeypatch):
    """The spec names torch's, transformers', sentence-transformers' and tokenizers' versions (their numerics decide
    the weights): an upgraded install never reuses a model its code would not reproduce."""
    from importlib.metadata import version

    import reasoning_embed.utils.hashing as hashing

    path = tmp_path / "backbones" / "tiny_random"
    first = tiny_backbone(path, TINY, corpus_dir)
    libraries = json.loads((first / "asset.json").read_text())["spec"]["libraries"]
    assert set(libraries) == {"torch", "transformers", "sentence-transformers", "tokenizers"}
    assert libraries["torch"] == version("torch") and libraries["transformers"] == version("transformers")
    real = hashing.library_versions
    monkeypatch.setattr(hashing, "library_versions", lambda names=hashing.NUMERIC_LIBRARIES: {
        **real(names), "transformers": "0.0.1"})
    upgraded = tiny_backbone(path, TINY, corpus_dir)
    assert upgraded != first and json.loads((upgraded / "asset.json").read_text())["spec"]["libraries"][
        "transformers"] == "0.0.1"


def test_build_once_builds_each_spec_once_and_leaves_no_partial_build(tmp_path):
    calls = []

    def build(staging):
        calls.append(staging)
        (staging / "x").write_text("done")

    a = build_once(tmp_path, "thing", {"k": 1}, build, log=lambda *_: None)
    assert build_once(tmp_path, "thing", {"k": 1}, build, log=lambda *_: None) == a and len(calls) == 1
    assert a.name == f"thing-{spec_hash({'k': 1})}" and (a / "x").read_text() == "done"

    def broken(staging):
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        build_once(tmp_path, "thing", {"k": 2}, broken, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [a.name]  # nothing half-built remains
    killed = tmp_path / f".thing-{spec_hash({'k': 3})}-abc"  # the staging dir of a build that was killed
    killed.mkdir()
    build_once(tmp_path, "thing", {"k": 3}, build, log=lambda *_: None)
    assert not killed.exists()


def test_idf_embedding_init_makes_the_untrained_mean_pool_an_idf_weighted_bag(corpus_dir, tmp_path):
    """``embedding_init: idf`` + ``rms_norm_eps: 1``: each row's length is its token's IDF over the train
    passages (counted here independently), and the pooled output of the untrained model is the IDF-weighted
    mean of its tokens' rows. With Qwen2's eps every RMSNorm rescales each token to one length and the pool
    weighs a frequent token like a rare one (the cosine below falls to 0.64)."""
    import math

    import torch

    from reasoning_embed.data.jsonl import read_jsonl
    from reasoning_embed.models.backbone import load_tokenizer
    from reasoning_embed.models.encoder import build_encoder

    spec = {**TINY, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "tokenizer": "bpe_code",
            "residual_init_scale": 0.1, "embedding_init": "idf", "rms_norm_eps": 1.0}
    built = tiny_backbone(tmp_path / "backbones" / "tiny_random", spec, corpus_dir)
    tok = load_tokenizer(str(built))
    passages = [p for f in sorted((corpus_dir / "train").glob("*.jsonl")) for row in read_jsonl(f)[0] for p in row.pos]
    df: dict[int, int] = {}
    for text in passages:
        for i in set(tok(text, add_special_tokens=False)["input_ids"]):
            df[i] = df.get(i, 0) + 1
    idf = {i: math.log((len(passages) + 1) / (n + 0.5)) for i, n in df.items()}
    rows = load_file(built / "model.safetensors")["model.embed_tokens.weight"].double()
    ids = sorted(idf)
    ratio = rows[ids].norm(dim=1) / torch.tensor([idf[i] for i in ids], dtype=torch.float64)
    assert ratio.std() / ratio.mean() < 0.15  # N(0, 1) rows of 64 dims: ~9% spread around one constant
    assert rows[ids].norm(dim=1).pow(2).mean().sqrt() / math.sqrt(64) <= 0.1 + 1e-6  # RMS <= IDF_INIT_RMS

    enc = build_encoder({"path": str(built)}, pooling="mean", normalize=False)
    frequent = max(ids, key=lambda i: df[i])
    rare = [i for i in ids if df[i] == 1][:3]
    token_ids = torch.tensor([[frequent, frequent, *rare]])  # IDF ~0.2 against ~8.4
    with torch.no_grad():
        pooled = enc(token_ids, torch.ones_like(token_ids))[0].double()
    weighted = rows[token_ids[0]].mean(0)
    assert torch.nn.functional.cosine_similarity(pooled, weighted, dim=0) > 0.99


def test_an_unknown_embedding_init_is_refused_with_the_choices(corpus_dir, tmp_path):
    with pytest.raises(ValueError, match=r"embedding_init must be one of \['normal', 'idf', 'distilled'\], got 'zeros'"):
        tiny_backbone(tmp_path / "backbones" / "tiny_random", {**TINY, "embedding_init": "zeros"}, corpus_dir)
