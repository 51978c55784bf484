"""HRSA inputs and feature extraction: text sources, streaming CKA, the token sample, exclusions,
attention modes, the tokenizer check, and the fast exact nulls the CLI uses."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from reasoning_embed.errors import DataFormatError, TokenizerMismatchError


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def enc(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    return build_encoder({"path": str(micro_backbone), "name": "micro"}, attention="causal")


@pytest.fixture(scope="module")
def texts(corpus_dir):
    from reasoning_embed.hrsa.texts import load_texts

    return load_texts("builtin", corpus_dir=corpus_dir, n_texts=40, seed=0)


# ------------------------------------------------------------------------------------------ texts
def test_text_sources(tmp_path, corpus_dir, texts):
    from reasoning_embed.hrsa.texts import load_texts

    assert len(texts.texts) == 40 and texts.labels is not None and len(texts.labels) == 40
    assert texts.source.startswith("builtin:") and texts.info["subset"] == 40

    (tmp_path / "a.txt").write_text("first text\n\n  second text \nfirst text\n")
    t = load_texts(str(tmp_path / "a.txt"))
    assert t.texts == ["first text", "second text"] and t.labels is None
    assert t.info["empty"] == 1 and t.info["duplicates"] == 1

    rows = [{"text": "alpha", "label": "x"}, {"text": "beta", "label": "y"}]
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = load_texts(str(tmp_path / "b.jsonl"))
    assert t.texts == ["alpha", "beta"] and t.labels == ["x", "y"]

    train = [{"query": ["inst", "q1"], "pos": ["p1"], "neg": ["n1"]}, {"query": ["inst", "q2"], "pos": ["p2"]}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    assert load_texts(str(tmp_path / "c.jsonl")).texts == ["p1", "p2"]
    assert load_texts(str(tmp_path / "c.jsonl"), pairs_use="both").texts == ["q1", "p1", "q2", "p2"]

    (tmp_path / "d.csv").write_text("id,text,topic\n1,hello world,a\n2,\"quoted, text\",b\n")
    t = load_texts(str(tmp_path / "d.csv"), label_field="topic")
    assert t.texts == ["hello world", "quoted, text"] and t.labels == ["a", "b"]

    import datasets

    datasets.Dataset.from_dict({"text": ["u", "v", "w"], "label": [0, 1, 0]}).save_to_disk(str(tmp_path / "ds"))
    t = load_texts(str(tmp_path / "ds"), n_texts=2, seed=1)
    assert len(t.texts) == 2 and set(t.texts) <= {"u", "v", "w"} and len(t.labels) == 2


def test_bad_text_files_name_the_file_and_what_was_expected(tmp_path):
    from reasoning_embed.hrsa.texts import load_texts

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 2.*not valid JSON"):
        load_texts(str(bad))
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(DataFormatError, match=r"bad\.jsonl, line 1: key 'text'.*missing"):
        load_texts(str(bad))
    csvf = tmp_path / "bad.csv"
    csvf.write_text("id,body\n1,x\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv.*'text'.*no such column"):
        load_texts(str(csvf))
    (tmp_path / "x.parquet").write_bytes(b"\0")
    with pytest.raises(DataFormatError, match=r"x\.parquet.*unknown file type"):
        load_texts(str(tmp_path / "x.parquet"))
    with pytest.raises(DataFormatError, match="no such file"):
        load_texts(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(DataFormatError, match="no usable texts"):
        load_texts(str(tmp_path / "empty.txt"))
    (tmp_path / "notds").mkdir()
    with pytest.raises(DataFormatError, match="save_to_disk"):
        load_texts(str(tmp_path / "notds"))


# ------------------------------------------------------------------------------------- extraction
def test_streaming_cka_equals_one_shot_on_all_rows(enc, texts):
    from reasoning_embed.hrsa import cka_matrix
    from reasoning_embed.hrsa.features import extract_features

    ext = extract_features(enc, enc, texts.texts, max_length=32, batch_size=7, max_sample=10**6,
                           dedupe_sample=False, progress=False)
    c = ext.counts
    assert c["sample_rows"] == c["tokens_kept"] == c["rows_streamed"] == ext.cka.n
    assert ext.sample_a.shape == (3, c["sample_rows"], 32)           # embedding output + 2 blocks
    for debiased in (False, True):
        streamed = ext.cka.compute(debiased)
        one_shot = cka_matrix(ext.sample_a.double(), ext.sample_b.double(), debiased=debiased)
        torch.testing.assert_close(streamed, one_shot, atol=1e-10, rtol=0)
        torch.testing.assert_close(torch.diagonal(streamed), torch.ones(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_sample_is_capped_by_text_and_identical_rows_are_left_out(enc, texts):
    from reasoning_embed.hrsa.features import extract_features, kept_positions, tokenize

    ext = extract_features(enc, enc, texts.texts, max_length=32, max_sample=150, progress=False, seed=3)
    c = ext.counts
    assert 0 < c["sample_rows"] <= 150 and ext.sample_a.shape[1] == c["sample_rows"] < c["tokens_kept"]
    assert c["rows_streamed"] == c["tokens_kept"]                     # CKA still sees every row
    assert (ext.sample_text >= 0).all() and (ext.sample_pos >= 0).all()
    # rows are grouped by text and a text's rows are contiguous (whole texts, for text-level statistics)
    st = ext.sample_text.numpy()
    assert len(np.unique(st)) == len(np.flatnonzero(np.diff(st))) + 1 == c["sample_texts"]
    # no two sample rows see the same causal context (equal prefixes give near-equal states)
    ids = tokenize(enc, texts.texts, 32)
    keys = {(tuple(ids[t][:p + 1])) for t, p in zip(ext.sample_text.tolist(), ext.sample_pos.tolist())}
    assert len(keys) == c["sample_rows"]
    # per-text cap
    ext2 = extract_features(enc, enc, texts.texts, max_length=32, max_sample=10**6, sample_tokens_per_text=3,
                            progress=False)
    assert np.bincount(ext2.sample_text.numpy()).max() <= 3
    assert kept_positions([5, 0, 7], {0}, True, True).tolist() == [2]


def test_context_duplicates_are_skipped_and_first_token_exclusion(enc):
    from reasoning_embed.hrsa.features import extract_features

    same_start = ["def alpha(x): return x", "def beta(y): return y * 2", "def gamma(z): pass", "class Foo: pass"]
    ext = extract_features(enc, enc, same_start, max_length=16, max_sample=1000, progress=False)
    assert ext.counts["sample_duplicates_skipped"] >= 2                # the shared "def" prefix
    ext = extract_features(enc, enc, same_start, max_length=16, max_sample=1000, progress=False,
                           exclude_first_token=True, dedupe_sample=False)
    assert (ext.sample_pos > 0).all()
    assert ext.counts["tokens_kept"] == ext.counts["tokens_nonpad"] - len(same_start)


def test_attention_modes_are_resolved_from_config(micro_backbone, tmp_path):
    from reasoning_embed.hrsa.features import resolve_attention

    assert resolve_attention(str(micro_backbone), "auto")[0] == "causal"
    assert resolve_attention(str(micro_backbone), "bidirectional") == ("bidirectional", "configured")
    export = tmp_path / "export"
    shutil.copytree(micro_backbone, export)
    cfg = json.loads((export / "config.json").read_text())
    (export / "config.json").write_text(json.dumps({**cfg, "is_causal": False}))
    mode, why = resolve_attention(str(export), "auto")
    assert mode == "bidirectional" and "is_causal=false" in why


@pytest.fixture(scope="module")
def other_tokenizer_backbone(tmp_path_factory, corpus_dir):
    from reasoning_embed.models.tiny import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("bb512") / "micro512", corpus_dir, seed=5, vocab_size=512,
                               hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                               intermediate_size=64)


def test_tokenizer_mismatch_is_an_error_at_token_level_and_fine_pooled(enc, texts, other_tokenizer_backbone):
    from reasoning_embed.hrsa.features import extract_features
    from reasoning_embed.models.encoder import build_encoder

    other = build_encoder({"path": str(other_tokenizer_backbone), "name": "micro512"}, attention="bidirectional")
    with pytest.raises(TokenizerMismatchError, match=r"(?s)micro.*micro512.*level=pooled"):
        extract_features(enc, other, texts.texts, max_length=32, progress=False, names=("micro", "micro512"))
    ext = extract_features(enc, other, texts.texts, level="pooled", max_length=32, progress=False)
    assert ext.tokenizers["same_ids_on_texts"] is False and ext.tokenizers["vocab_size_b"] == 512
    assert ext.sample_a.shape[1] == ext.counts["sample_rows"] == len(texts.texts) == ext.cka.n
    assert torch.isfinite(ext.cka.compute()).all() and torch.isfinite(ext.pooled_b).all()


# --------------------------------------------------------------------------------- fast exact nulls
def _related(n=180, groups=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 12, generator=g, dtype=torch.float64)
    Y = X @ torch.randn(12, 9, generator=g, dtype=torch.float64) + torch.randn(n, 9, generator=g, dtype=torch.float64)
    return X, Y, torch.arange(n) // (n // groups)


def test_fast_cka_bootstrap_equals_generic_bootstrap():
    from reasoning_embed.hrsa import bootstrap_ci, cka_bootstrap_ci, linear_cka

    X, Y, groups = _related()
    fast = cka_bootstrap_ci(X, Y, groups, n_boot=15, seed=4)
    for name, deb in (("biased", False), ("debiased", True)):
        ref = bootstrap_ci(lambda a, b: linear_cka(a, b, deb), X, Y, groups, n_boot=15, seed=4)
        torch.testing.assert_close(fast[name].samples, ref.samples, atol=1e-12, rtol=0)
        assert fast[name].estimate == pytest.approx(ref.estimate, abs=1e-12)
        assert (fast[name].low, fast[name].high) == pytest.approx((ref.low, ref.high), abs=1e-12)


def test_fast_knn_bootstrap_and_permutation_equal_generic_versions():
    from reasoning_embed.hrsa import bootstrap_ci, knn_bootstrap_ci, knn_jaccard, knn_permutation_test, permutation_test

    X, Y, groups = _related()
    boot = knn_bootstrap_ci(X, Y, groups, k=(5, 10), n_boot=12, seed=2, top=11)   # small top: exact fallback used
    perm = knn_permutation_test(X, Y, groups, k=(5, 10), n_perm=12, seed=2)
    for k in (5, 10):
        ref = bootstrap_ci(lambda a, b, row_ids: knn_jaccard(a, b, k, row_ids=row_ids).jaccard[k], X, Y, groups,
                           n_boot=12, seed=2, pass_row_ids=True)
        torch.testing.assert_close(boot[k].samples, ref.samples, atol=1e-12, rtol=0)
        assert boot[k].estimate == pytest.approx(ref.estimate, abs=1e-12)
        ref = permutation_test(lambda a, b: knn_jaccard(a, b, k).jaccard[k], X, Y, groups, n_perm=12, seed=2)
        torch.testing.assert_close(perm[k].null, ref.null, atol=1e-12, rtol=0)
        assert perm[k].p_value == ref.p_value
    same = knn_permutation_test(X, X, groups, k=5, n_perm=19, seed=0)[5]
    assert same.observed == 1.0 and same.p_value == pytest.approx(1 / 20)


def test_dimcorr_matrix_equals_per_pair_function():
    from reasoning_embed.hrsa import dimension_wise_correlation
    from reasoning_embed.hrsa.analysis import dimcorr_matrix

    g = torch.Generator().manual_seed(0)
    Xs, Ys = torch.randn(3, 50, 6, generator=g), torch.randn(2, 50, 6, generator=g)
    Ys[1] = 0.5 * Xs[2] + 0.1 * Ys[1]
    Xs[0, :, 4] = 3.0                                                 # a zero-variance column
    mean, n_exc = dimcorr_matrix(Xs, Ys)
    for i in range(3):
        for j in range(2):
            r = dimension_wise_correlation(Xs[i], Ys[j])
            assert float(mean[i, j]) == pytest.approx(r.mean, abs=1e-12) and int(n_exc[i, j]) == r.n_excluded
    assert int(n_exc[0, 0]) == 1 and float(mean[2, 1]) > 0.9
