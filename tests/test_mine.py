"""Hard-negative mining: the margin rule, exclusions, count/sampling, modes, resumption, errors, the CLI.

The reference model is the 2-layer micro backbone; every similarity the assertions use is recomputed
here with a separately built encoder (not the miner's), so the test checks the rule, not the code path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, write_jsonl
from reasoning_embed.errors import DataFormatError
from reasoning_embed.mining.mine import MineSettings, mine, mine_file, normalise_text
from reasoning_embed import CONF_DIR

FIX = ROOT / "tests" / "fixtures" / "mining"
MAXLEN = 48
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference(micro_backbone):
    from reasoning_embed.mining.reference import load_reference

    return load_reference(str(micro_backbone), max_length=MAXLEN)


@pytest.fixture(scope="module")
def judge(micro_backbone):
    """An independent encoder: similarities recomputed outside the miner."""
    from reasoning_embed.models.encoder import build_encoder

    enc = build_encoder({"path": str(micro_backbone)}, max_query_length=MAXLEN, max_passage_length=MAXLEN)

    def cos(queries, passages):
        q = enc.encode(queries, None, batch_size=256, is_query=True)
        p = enc.encode(passages, batch_size=256)
        return (q @ p.T).numpy()

    return cos


@pytest.fixture(scope="module")
def small_input(corpus_dir, tmp_path_factory) -> Path:
    """150 real rows (stdlib val docstrings) with their random same-module negatives."""
    lines = (corpus_dir / "val" / "docstring.jsonl").read_text().splitlines()[:150]
    return write_jsonl(tmp_path_factory.mktemp("in") / "doc.jsonl", lines)


def read_rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def candidate_table(rows, judge, settings: MineSettings):
    """Independent re-implementation of steps 1-5 for the default corpus (the input's positives)."""
    corpus = list(dict.fromkeys(p for r in rows for p in r["pos"]))
    sims = judge([r["query"][1] for r in rows], corpus)
    n = len(corpus)
    k = settings.top_k if not settings.top_fraction else \
        min(settings.top_k, max(settings.min_candidates, math.ceil(settings.top_fraction * n)))
    k = min(k, n)
    out = []
    for j, r in enumerate(rows):
        pos_sim = min(sims[j, corpus.index(p)] for p in r["pos"])   # the smallest positive is the reference
        banned = {normalise_text(p) for p in r["pos"]} | {normalise_text(r["query"][1])}
        if settings.mode == "append":
            banned |= {normalise_text(x) for x in r["neg"]}
        ranked = [i for i in np.argsort(-sims[j], kind="stable") if normalise_text(corpus[i]) not in banned][:k]
        out.append({"pos_sim": pos_sim, "ranked": [(corpus[i], sims[j, i]) for i in ranked]})
    return out


def test_margin_rule_holds_for_every_mined_negative(small_input, reference, judge, tmp_path):
    rows = read_rows(small_input)
    settings = MineSettings(relative_margin=0.05)
    rep = mine_file(small_input, tmp_path / "out.jsonl", reference, settings, progress=False)
    out = read_rows(tmp_path / "out.jsonl")
    assert len(out) == len(rows) == rep["rows_in"] == rep["rows_out"]
    mined = [o["neg"][len(r["neg"]):] for r, o in zip(rows, out)]
    assert all(o["neg"][:len(r["neg"])] == r["neg"] for r, o in zip(rows, out))  # appended after the existing
    assert sum(map(len, mined)) == rep["mined_negatives"] > 0
    assert rep["margin_rejected"] > 0  # the rule had something to reject, so passing it means something
    texts = sorted({t for r in rows for t in r["pos"]} | {n for ms in mined for n in ms})
    col = {t: i for i, t in enumerate(texts)}
    sims = judge([r["query"][1] for r in rows], texts)
    for j, (r, ms) in enumerate(zip(rows, mined)):
        pos_sim = min(sims[j, col[p]] for p in r["pos"])
        for n in ms:
            assert sims[j, col[n]] <= pos_sim - abs(pos_sim) * 0.05 + TOL, (r["query"][1], n, sims[j, col[n]], pos_sim)
    assert rep["histograms"]["mined_neg_sim"]["n"] == rep["mined_negatives"]
    assert rep["histograms"]["pos_sim"]["n"] == len(rows)
    assert sum(rep["histograms"]["pos_sim"]["counts"]) == len(rows)
    assert rep["rows_short"] == sum(len(m) < 3 for m in mined)
    assert Path(f"{tmp_path / 'out.jsonl'}.report.json").is_file()
    assert not (tmp_path / "out.jsonl.work").exists()  # cleaned after success


def test_top_sampling_equals_independent_ranking(small_input, reference, judge, tmp_path):
    rows = read_rows(small_input)
    settings = MineSettings(top_k=20, top_fraction=None, relative_margin=0.05, mode="replace", num_negatives=3)
    mine_file(small_input, tmp_path / "out.jsonl", reference, settings, progress=False)
    out = read_rows(tmp_path / "out.jsonl")
    table = candidate_table(rows, judge, settings)
    agree = 0
    for t, o in zip(table, out):
        expected = [c for c, s in t["ranked"] if s <= t["pos_sim"] - abs(t["pos_sim"]) * 0.05][:3]
        agree += o["neg"] == expected
    assert agree >= len(rows) - 2  # float ties near the threshold may flip a rare row


def test_positives_duplicates_and_query_text_are_never_negatives(reference, tmp_path):
    settings = MineSettings(relative_margin=0.0, num_negatives=5, top_fraction=None)  # margin 0: take many
    rep = mine_file(FIX / "dups.jsonl", tmp_path / "out.jsonl", reference, settings, progress=False)
    rows, out = read_rows(FIX / "dups.jsonl"), read_rows(tmp_path / "out.jsonl")
    assert rep["excluded_positive_duplicate"] > 0 and rep["excluded_positive"] > 0
    assert rep["excluded_query_text"] > 0 and rep["excluded_existing_negative"] > 0
    for r, o in zip(rows, out):
        mined = o["neg"][len(r["neg"]):]
        banned = {normalise_text(p) for p in r["pos"]} | {normalise_text(r["query"][1])} | \
                 {normalise_text(n) for n in r["neg"]}
        assert not banned & {normalise_text(m) for m in mined}, (r["id"], mined)
        assert len({normalise_text(m) for m in mined}) == len(mined)  # no duplicate among the picks
        assert o["id"] == r["id"]  # extra fields kept
    assert out[5]["neg"][0] == rows[5]["neg"][0] and out[5]["neg"].count(rows[5]["neg"][0]) == 1


def test_count_rank_range_and_random_sampling(small_input, reference, judge, tmp_path):
    rows = read_rows(small_input)
    base = dict(top_k=30, top_fraction=None, relative_margin=0.05, mode="replace", num_negatives=5,
                rank_range=(2, 25), keep_work_dir=True)
    out_path = tmp_path / "out.jsonl"  # one work dir, embeddings reused across the settings below
    mine_file(small_input, out_path, reference, MineSettings(**base, sampling="random", seed=1), progress=False)
    rand1 = read_rows(out_path)
    rep = mine_file(small_input, out_path, reference, MineSettings(**base, sampling="random", seed=1), progress=False)
    assert rep["encoding"]["queries"]["batches_encoded"] == 0  # kept work dir: nothing re-encoded
    assert read_rows(out_path) == rand1  # seeded: reproducible
    mine_file(small_input, out_path, reference, MineSettings(**base, sampling="random", seed=2), progress=False)
    rand2 = read_rows(out_path)
    mine_file(small_input, out_path, reference, MineSettings(**base, sampling="top"), progress=False)
    top = read_rows(out_path)
    table = candidate_table(rows, judge, MineSettings(**base))
    short = 0
    for t, a, b, c in zip(table, rand1, rand2, top):
        window = t["ranked"][2:25]
        valid = {x: s for x, s in window if s <= t["pos_sim"] - abs(t["pos_sim"]) * 0.05 + TOL}
        short += len(a["neg"]) != min(5, len(valid))
        for picks in (a["neg"], b["neg"], c["neg"]):
            assert len(picks) <= 5 and set(picks) <= set(valid)
            sims = [valid[x] for x in picks]
            assert all(s1 >= s2 - TOL for s1, s2 in zip(sims, sims[1:]))  # reported in rank order
        assert t["ranked"][0][0] not in c["neg"] and t["ranked"][1][0] not in c["neg"]  # rank_range start 2
    assert short <= 2  # random sampling takes as many as it can (a float tie at the threshold may differ)
    assert any(a["neg"] != c["neg"] for a, c in zip(rand1, top))
    assert any(a["neg"] != b["neg"] for a, b in zip(rand1, rand2))
    assert any(len(c["neg"]) == 5 for c in top)
    # num_negatives=1 takes exactly the first valid candidate
    mine_file(small_input, out_path, reference, MineSettings(**{**base, "num_negatives": 1}), progress=False)
    one = read_rows(out_path)
    assert all(o["neg"] == c["neg"][:1] for o, c in zip(one, top))


def test_replace_mode_and_min_negatives(small_input, reference, tmp_path):
    rows = read_rows(small_input)
    settings = MineSettings(mode="replace", keep_work_dir=True)
    rep = mine_file(small_input, tmp_path / "r.jsonl", reference, settings, progress=False)
    out = read_rows(tmp_path / "r.jsonl")
    assert len(out) == len(rows) and sum(len(o["neg"]) for o in out) == rep["mined_negatives"]
    assert sum(not o["neg"] for o in out) == rep["rows_without_mined"] > 0
    settings.min_negatives = 3
    rep = mine_file(small_input, tmp_path / "r.jsonl", reference, settings, progress=False)
    kept = read_rows(tmp_path / "r.jsonl")
    assert kept == [o for o in out if len(o["neg"]) >= 3]
    assert rep["rows_out"] == len(kept) == len(rows) - rep["rows_dropped_min_negatives"] < len(rows)


def test_index_variants_agree(small_input, reference, tmp_path):
    common = dict(keep_work_dir=True, top_fraction=None, top_k=20)
    outs = {}
    for index in ("flat", "torch", "ivf"):
        mine_file(small_input, tmp_path / "o.jsonl", reference, MineSettings(index=index, ivf_nprobe=1000, **common),
                  progress=False)
        outs[index] = read_rows(tmp_path / "o.jsonl")
    assert sum(a == b for a, b in zip(outs["flat"], outs["torch"])) >= len(outs["flat"]) - 2  # float ties only
    same = sum(a == b for a, b in zip(outs["flat"], outs["ivf"]))
    assert same >= len(outs["flat"]) - 2  # ivf probing every list is exact up to float ties


class Interrupt(Exception):
    pass


def test_interrupted_mining_resumes_without_reencoding(small_input, reference, tmp_path):
    small_input = write_jsonl(tmp_path / "in.jsonl", small_input.read_text().splitlines()[:72])
    calls = []
    from reasoning_embed.mining.reference import Reference

    class CountingRef(Reference):
        kind, name, fingerprint, dim = reference.kind, reference.name, reference.fingerprint, reference.dim

        def encode(self, texts, instructions=None, is_query=False):
            calls.append(len(texts))
            return reference.encode(texts, instructions, is_query)

    settings = MineSettings(batch_size=8)
    ref = CountingRef()
    mine_file(small_input, tmp_path / "full" / "out.jsonl", ref, settings, progress=False)
    total = len(calls)
    n_pos = len({p for r in read_rows(small_input) for p in r["pos"]})
    assert total == 9 + math.ceil(n_pos / 8) and total - 13 > 0  # 72 queries, the positives, 8 a batch

    def stop_after(n):
        def hook(name, batch, n_batches):
            if name == "passages" and batch == n - 1:
                raise Interrupt

        return hook

    calls.clear()
    out = tmp_path / "run" / "out.jsonl"
    with pytest.raises(Interrupt):
        mine_file(small_input, out, ref, settings, progress=False, on_batch=stop_after(4))
    assert len(calls) == 9 + 4 and not out.exists()
    state = json.loads((tmp_path / "run" / "out.jsonl.work" / "passages.state.json").read_text())
    assert state["done_batches"] == 4
    calls.clear()
    rep = mine_file(small_input, out, ref, settings, progress=False)
    assert len(calls) == total - 13  # only the passage batches that were not done
    assert rep["encoding"]["queries"]["batches_resumed"] == 9 and rep["encoding"]["passages"]["batches_resumed"] == 4
    assert out.read_bytes() == (tmp_path / "full" / "out.jsonl").read_bytes()
    # a changed input invalidates the saved embeddings instead of mixing them
    calls.clear()
    with pytest.raises(Interrupt):
        mine_file(small_input, out, ref, settings, progress=False, on_batch=stop_after(2))
    changed = write_jsonl(tmp_path / "changed.jsonl", read_rows(small_input)[:50])
    rep = mine_file(changed, out, ref, settings, progress=False)
    assert rep["encoding"]["passages"]["batches_resumed"] == 0


@pytest.mark.parametrize("content, line, key, what", [
    ('{"query": ["i", "q"], "pos": ["p"]}\n{"query": ["i", "q2"], "pos": ["p"]\n', 2, None, "not valid JSON"),
    ('{"query": ["i", "q"], "pos": ["p"]}\n{"pos": ["p"]}\n', 2, "query", "missing"),
    ('{"query": ["i", "q"], "pos": ["p"]}\n\n{"query": ["i", "q"]}\n', 3, "pos", "missing"),
])
def test_malformed_input_names_file_and_line(tmp_path, content, line, key, what):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)

    def never():
        raise AssertionError("the reference must not load for malformed input")

    with pytest.raises(DataFormatError, match=what) as err:
        mine(path, tmp_path / "out.jsonl", never, MineSettings(), progress=False)
    assert err.value.line == line and err.value.key == key and str(path) in str(err.value)


def test_corpus_file_errors_and_use(tmp_path, reference):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"query": ["i", f"query {i}"], "pos": [f"passage {i}"]} for i in range(5)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataFormatError, match="empty corpus"):
        mine(inp, tmp_path / "o.jsonl", reference, MineSettings(), corpus=empty, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataFormatError, match="line 2"):
        mine(inp, tmp_path / "o.jsonl", reference, MineSettings(), corpus=bad, progress=False)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ['"passage 1"', {"title": "T", "text": "other text"},
                                                     {"text": "third text"}, {"pos": ["from a row"]}])
    rep = mine(inp, tmp_path / "o.jsonl", reference, MineSettings(relative_margin=0.0, num_negatives=10),
               corpus=corpus, progress=False)[0]
    assert rep["corpus_size"] == 4
    out = read_rows(tmp_path / "o.jsonl")
    allowed = {"passage 1", "T other text", "third text", "from a row"}
    assert all(set(o["neg"]) <= allowed for o in out)
    assert "passage 1" not in out[1]["neg"]  # row 1's own positive, though it is in the corpus


def test_cli_mine_directory(corpus_dir, micro_backbone, tmp_path):
    """The Hydra entry point, composed in-process: a directory in, one mined file per source out."""
    from hydra import compose, initialize_config_dir

    from reasoning_embed.mine import run

    src = tmp_path / "src"
    for name in ("docstring", "code"):
        write_jsonl(src / f"{name}.jsonl", (corpus_dir / "val" / f"{name}.jsonl").read_text().splitlines()[:40])
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="mine", overrides=[
            f"input={src}", f"output={tmp_path / 'mined'}", f"reference={micro_backbone}", "max_length=32",
            "progress=false", "mining.num_negatives=2", "mining.mode=replace", "mining.rank_range=[1,null]"])
    reports = run(cfg)
    assert [Path(r["output"]).name for r in reports] == ["code.jsonl", "docstring.jsonl"]
    for r in reports:
        rows = read_rows(r["output"])
        assert len(rows) == 40 and all(len(x["neg"]) <= 2 for x in rows)
        assert json.loads(Path(r["output"] + ".report.json").read_text())["settings"]["rank_range"] == [1, None]


def test_reference_resolution(micro_encoder, tmp_path):
    from reasoning_embed.errors import BackboneNotAvailableError
    from reasoning_embed.mining.reference import load_reference, resolve_reference
    from reasoning_embed.models.export import export_encoder

    export_encoder(micro_encoder, tmp_path / "run" / "model")
    assert resolve_reference(str(tmp_path / "run")) == ("encoder", str(tmp_path / "run" / "model"))
    ref = load_reference(str(tmp_path / "run"), max_length=48)
    texts = ["def f(x): return x", "Return the sum of two numbers."]
    torch.testing.assert_close(torch.from_numpy(ref.encode(texts)), micro_encoder.encode(texts), atol=1e-5, rtol=0)
    with pytest.raises(BackboneNotAvailableError):
        resolve_reference(str(tmp_path / "nope"))
    with pytest.raises(BackboneNotAvailableError, match="not in the local Hugging Face cache"):
        resolve_reference("nobody-here/no-such-model-xyz")


def test_cli_malformed_input_is_one_clear_line(tmp_path):
    """Through ``python -m``: the input is read before the model loads, and the error is one line (exit 2)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": ["i", "q"], "pos": ["p"]}\n{"query": ["i", "q"]}\n')
    proc = subprocess.run([sys.executable, "-m", "reasoning_embed.mine", f"input={bad}", f"output={tmp_path / 'o.jsonl'}",
                           "reference=/nonexistent/model", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {bad}, line 2: key 'pos': missing" in proc.stderr
    assert "Traceback" not in proc.stderr
