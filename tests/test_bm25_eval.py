"""model=bm25 in evaluation: the lexical baseline behind mteb's search protocol (retrieval and reranking)."""

from types import SimpleNamespace

import pytest

from reasoning_embed.evaluation.bm25 import Bm25SearchAdapter, is_bm25

datasets = pytest.importorskip("datasets")

CORPUS = datasets.Dataset.from_dict({
    "id": ["d0", "d1", "d2"],
    "title": ["", "", ""],
    "text": ["def read_json(path): return json.load(open(path))",
             "def write_csv(rows, path): csv.writer(open(path, 'w')).writerows(rows)",
             "class HttpServer: serve forever on a socket"],
})
QUERIES = datasets.Dataset.from_dict({"id": ["q0", "q1"], "text": ["read a json file", "an http server on a socket"]})
META = SimpleNamespace(name="Toy", type="Retrieval")


def _search(adapter, top_ranked=None, top_k=2):
    adapter.index(CORPUS, task_metadata=META, hf_split="test", hf_subset="default", encode_kwargs={})
    return adapter.search(QUERIES, task_metadata=META, hf_split="test", hf_subset="default", top_k=top_k,
                          encode_kwargs={}, top_ranked=top_ranked)


def test_bm25_ranks_the_document_sharing_the_query_words_first():
    out = _search(Bm25SearchAdapter())
    assert next(iter(out["q0"])) == "d0" and next(iter(out["q1"])) == "d2"
    assert all(len(v) == 2 for v in out.values())
    assert list(out["q0"].values()) == sorted(out["q0"].values(), reverse=True)


def test_bm25_reranking_scores_only_each_querys_candidates():
    out = _search(Bm25SearchAdapter(), top_ranked={"q0": ["d1", "d2"], "q1": []}, top_k=3)
    assert set(out["q0"]) == {"d1", "d2"} and out["q1"] == {}


def test_bm25_has_no_embeddings_and_says_so():
    with pytest.raises(NotImplementedError, match="retrieval and reranking tasks only"):
        Bm25SearchAdapter().encode([], task_metadata=SimpleNamespace(name="STS12", type="STS"))
    assert is_bm25("bm25") and is_bm25("BM25") and not is_bm25("outputs/bm25_run")
