"""HRSA at scale: the blocked CKA engine within a memory budget equals today's engine, the float32 fast
path stays accurate with massive activations, and the feature cache is reused, never stale, and resumes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from reasoning_embed.hrsa import CKAAccumulator, linear_cka
from reasoning_embed.hrsa.cka_blocked import cka_matrix_blocked, parse_budget, plan_blocks

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"log": lambda msg: None}


def fake_models(seed=0, n=150, La=4, Lb=3, da=6, db=9, offset=10.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=g, dtype=torch.float64)
    Xs = torch.stack([z @ torch.randn(4, da, generator=g, dtype=torch.float64) * (l + 1)
                      + torch.randn(n, da, generator=g, dtype=torch.float64) * 0.5 * (l + 1) + offset
                      for l in range(La)])
    Ys = torch.stack([z @ torch.randn(4, db, generator=g, dtype=torch.float64)
                      + torch.randn(n, db, generator=g, dtype=torch.float64) * (l + 1) - offset
                      for l in range(Lb)])
    return Xs, Ys


def todays_engine(Xs, Ys):
    acc = CKAAccumulator(debiased=True, compute_dtype=torch.float64)
    for s in range(0, Xs.shape[1], 64):
        acc.update(Xs[:, s:s + 64], Ys[:, s:s + 64])
    return acc.compute(False), acc.compute(True)


def rel(got, ref):
    return float(((got - ref).abs() / ref.abs()).max())


# ----------------------------------------------------------------------------------- blocked CKA
def test_blocked_cka_equals_todays_engine_for_every_blocking():
    Xs, Ys = fake_models()
    ref_b, ref_d = todays_engine(Xs, Ys)
    for ba, bb, chunk in itertools.product(range(1, 5), range(1, 4), (1, 7, 64, 150, 1000)):
        plan = plan_blocks(4, 3, 6, 9, 150, None, torch.float64, block_a=ba, block_b=bb, row_chunk=chunk)
        res = cka_matrix_blocked(Xs, Ys, compute_dtype=torch.float64, plan=plan, **QUIET)
        assert rel(res.compute(False), ref_b) < 1e-10, (ba, bb, chunk)
        assert rel(res.compute(True), ref_d) < 1e-10, (ba, bb, chunk)
    assert res.n == 150 and res.track_debiased and float(ref_d.min()) < 0.9


def test_memory_budget_picks_blocks_that_fit_and_refuses_too_small():
    La, Lb, d, n = 29, 29, 1536, 20000
    one_pair = d * d * 8                                   # float64 sums of one layer pair
    for gb in (2, 4, 8):
        plan = plan_blocks(La, Lb, d, d, n, f"{gb}GB", torch.float32, storage_bytes=2)
        assert plan.state_bytes <= gb * 1e9
        assert len(plan.blocks_a[0]) * len(plan.blocks_b[0]) * one_pair <= gb * 1e9
        assert sorted(sum(plan.blocks_a, [])) == list(range(La)) and sorted(sum(plan.blocks_b, [])) == list(range(Lb))
        assert "passes over the features" in plan.describe()
    small, big = (plan_blocks(La, Lb, d, d, n, f"{g}GB", torch.float32) for g in (2, 8))
    assert small.reads["a"] + small.reads["b"] > big.reads["a"] + big.reads["b"]     # more budget, fewer passes
    assert plan_blocks(La, Lb, d, d, n, None).reads == {"a": 3, "b": 3}
    with pytest.raises(ValueError, match="too small"):
        plan_blocks(La, Lb, d, d, n, "10MB")
    assert parse_budget("4GB") == 4 * 10 ** 9 and parse_budget("512MiB") == 512 * 2 ** 20 and parse_budget(None) is None
    with pytest.raises(ValueError, match="4GB"):
        parse_budget("four gigs")


def test_blocked_cka_reading_the_cache_format_equals_in_memory(tmp_path):
    from reasoning_embed.hrsa.feature_cache import CachedStates, _StatesFile

    Xs, Ys = fake_models(La=3, Lb=2, n=90)
    files = []
    for name, S in (("a", Xs), ("b", Ys)):
        f = _StatesFile(tmp_path / f"{name}.bin", S.shape[0], S.shape[1], S.shape[2], "float32", create=True)
        for layer in range(S.shape[0]):
            f.write(layer, 0, S[layer].float())
        files.append(CachedStates(tmp_path, list(range(S.shape[0])), S.shape[2], np.array([0, S.shape[1]]),
                                  None, None, f))
    rows = np.flatnonzero(np.arange(90) % 7 != 3)                 # excluded tokens are skipped when reading
    src_a, src_b = files[0].source([0, 1, 2], rows), files[1].source([0, 1], rows)
    ref_b, ref_d = todays_engine(Xs[:, rows].float().double(), Ys[:, rows].float().double())
    res = cka_matrix_blocked(src_a, src_b, compute_dtype=torch.float64,
                             plan=plan_blocks(3, 2, 6, 9, len(rows), None, torch.float64, block_a=2, block_b=1,
                                              row_chunk=16), **QUIET)
    assert rel(res.compute(False), ref_b) < 1e-10 and rel(res.compute(True), ref_d) < 1e-10


def massive_inputs(n=2000, d=64, seed=0):
    """Hidden-state-like rows: a 1e4 offset on every row, one huge dimension on 1% of the rows (attention
    sinks), and one dimension 300x larger than the others throughout."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 8, generator=g, dtype=torch.float64)
    out = []
    for s in range(2):
        X = z @ torch.randn(8, d, generator=g, dtype=torch.float64) + torch.randn(n, d, generator=g,
                                                                               dtype=torch.float64)
        X += 1e4 * torch.randn(d, generator=g, dtype=torch.float64).sign()   # row offset 1e4
        X[:, 5] *= 300.0                                                       # a single huge dimension
        X[:: 100, 3 + s] += 5e3                                               # massive activation on 1% of rows
        out.append(X.float().double())                                        # what float32 states can hold
    return torch.stack([out[0], out[0] * 0.5 + out[1] * 0.5]), torch.stack([out[1]])


def test_float32_fast_path_error_is_bounded_with_massive_activations():
    Xs, Ys = massive_inputs()
    exact = [torch.tensor([[linear_cka(x, y, deb) for y in Ys] for x in Xs], dtype=torch.float64)
             for deb in (False, True)]
    fast = cka_matrix_blocked(Xs.float(), Ys.float(), memory_budget="1MB", **QUIET)       # the default: float32
    assert fast.plan.compute_dtype == torch.float32
    acc = CKAAccumulator(debiased=True)                                                   # its default too
    for s in range(0, Xs.shape[1], 300):
        acc.update(Xs[:, s:s + 300].float(), Ys[:, s:s + 300].float())
    for deb in (False, True):
        assert rel(fast.compute(deb), exact[deb]) < 1e-6
        assert rel(acc.compute(deb), exact[deb]) < 1e-6
    assert 0.05 < float(exact[0].min()) < 0.99                                           # not a trivial value


# ---------------------------------------------------------------------------------- feature cache
@pytest.fixture(scope="module")
def enc(micro_backbone):
    from reasoning_embed.models.encoder import build_encoder

    return build_encoder({"path": str(micro_backbone), "name": "micro"}, attention="causal")


@pytest.fixture(scope="module")
def ids(enc, corpus_dir):
    from reasoning_embed.hrsa.features import tokenize
    from reasoning_embed.hrsa.texts import load_texts

    return tokenize(enc, load_texts("builtin", corpus_dir=corpus_dir, n_texts=30, seed=0).texts, 24)


def counting(monkeypatch, enc, fail_at=None):
    calls = {"n": 0}
    real = type(enc).hidden_states

    def wrapped(input_ids, attention_mask):
        calls["n"] += 1
        if fail_at is not None and calls["n"] == fail_at:
            raise KeyboardInterrupt("interrupted")
        return real(enc, input_ids, attention_mask)

    monkeypatch.setattr(enc, "hidden_states", wrapped)
    return calls


def all_rows(st):
    return torch.stack([st.file.read(k, 0, st.n_rows).float() for k in range(len(st.layers))])


def test_feature_cache_is_reused_and_a_changed_key_never_reuses_a_stale_entry(enc, ids, tmp_path, monkeypatch):
    import copy

    from reasoning_embed.hrsa.feature_cache import extract_states

    kw = dict(cache_dir=tmp_path, batch_size=7, progress=False)
    calls = counting(monkeypatch, enc)
    first = extract_states(enc, ids, [0, 2], **kw)
    n_batches = calls["n"]
    assert n_batches == 5 and not first.reused
    again = extract_states(enc, ids, [0, 2], **kw)
    assert again.reused and calls["n"] == n_batches and again.path == first.path
    assert torch.equal(all_rows(again), all_rows(first))
    entries = {first.path}
    for change in (dict(ids=ids[:-1]), dict(layers=[0, 1]), dict(storage="float16"), dict(batch_size=8)):
        args = {"ids": ids, "layers": [0, 2], **kw, **change}
        st = extract_states(enc, args.pop("ids"), args.pop("layers"), **args)
        assert not st.reused and st.path not in entries, change
        entries.add(st.path)
    other = copy.deepcopy(enc)                             # the same model with one weight changed
    with torch.no_grad():
        next(other.backbone.parameters())[0, 0] += 0.5
    st = extract_states(other, ids, [0, 2], **kw)
    assert not st.reused and st.path not in entries
    # an entry whose record disagrees with its key is rebuilt, not trusted
    meta = json.loads((first.path / "meta.json").read_text())
    meta["key"]["n_texts"] += 1
    (first.path / "meta.json").write_text(json.dumps(meta))
    before = calls["n"]
    rebuilt = extract_states(enc, ids, [0, 2], **kw)
    assert not rebuilt.reused and calls["n"] == before + n_batches
    assert torch.equal(all_rows(rebuilt), all_rows(first))


def test_interrupted_extraction_resumes_where_it_stopped(enc, ids, tmp_path, monkeypatch):
    from reasoning_embed.hrsa.feature_cache import extract_states

    kw = dict(batch_size=7, progress=False)
    whole = extract_states(enc, ids, [1, 2], cache_dir=tmp_path / "whole", **kw)
    counting(monkeypatch, enc, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        extract_states(enc, ids, [1, 2], cache_dir=tmp_path / "cut", **kw)
    meta = json.loads(next((tmp_path / "cut").glob("*/meta.json")).read_text())
    assert meta["batches_done"] == 2 and not meta["complete"]
    calls = counting(monkeypatch, enc)
    resumed = extract_states(enc, ids, [1, 2], cache_dir=tmp_path / "cut", **kw)
    assert calls["n"] == 5 - 2 and not resumed.reused
    assert torch.equal(all_rows(resumed), all_rows(whole))
    assert torch.equal(resumed.max_abs, whole.max_abs) and torch.equal(resumed.max_abs_first, whole.max_abs_first)


def test_extraction_through_the_cache_and_a_budget_equals_the_unblocked_run(enc, corpus_dir, tmp_path):
    from reasoning_embed.hrsa.features import extract_features
    from reasoning_embed.hrsa.texts import load_texts

    texts = load_texts("builtin", corpus_dir=corpus_dir, n_texts=30, seed=0).texts
    kw = dict(max_length=24, batch_size=7, progress=False, cache_dir=tmp_path)
    one = extract_features(enc, enc, texts, **kw)
    assert not one.cache["model_a"]["reused"] and one.cache["model_b"]["reused"]   # the same model: one entry
    blocked = extract_features(enc, enc, texts, memory_budget="40KB", **kw)
    assert blocked.cache["model_a"]["reused"] and "3 x 3 layer blocks" in blocked.cache["plan"]
    for deb in (False, True):
        assert rel(blocked.cka.compute(deb), one.cka.compute(deb)) < 1e-10
    torch.testing.assert_close(blocked.sample_a, one.sample_a, rtol=0, atol=0)
