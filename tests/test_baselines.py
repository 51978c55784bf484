"""Built-in baselines: BM25 over code-aware tokens and the shipped MiniLM, with the keys of final_val."""

from __future__ import annotations

import pytest

import reasoning_embed.utils.hashing as hashing
from reasoning_embed.evaluation import baselines as bl
from reasoning_embed.retrieval import RetrievalSet

SET = RetrievalSet(
    name="code",
    queries=["read a json file", "join path parts", "sort a list in place"],
    instructions=["Retrieve the function"] * 3,
    corpus=["def read_json(path): return json.load(open(path))", "def joinPathParts(*parts): return os.path.join(*parts)",
            "def sort_in_place(items): items.sort()", "def unrelated(): pass"],
    qrels=[{0: 1}, {1: 1}, {2: 1}],
)


def test_code_tokens_split_identifiers():
    assert bl.code_tokens("readJSONFile(path_name)") == ["readjsonfile", "read", "json", "file", "path_name", "path",
                                                         "name"]
    assert bl.code_tokens("os.path.join") == ["os", "path", "join"]
    assert bl.code_tokens("!!!") == ["<empty>"]


def test_bm25_finds_the_function_named_by_the_query():
    scores, idx = bl.bm25_search(SET.queries, SET.corpus, k=10)
    assert idx.shape == (3, 4) and idx[:, 0].tolist() == [0, 1, 2]  # camelCase and snake_case both matched
    assert (scores[:, 0] > scores[:, 1]).all()


def test_baseline_keys_are_those_of_final_val_and_are_cached(tmp_path, monkeypatch):
    out = bl.baseline_metrics([SET], ["bm25"], cache_dir=tmp_path)
    assert set(out) == {"bm25"}
    assert set(out["bm25"]) == {f"val/code/{m}" for m in ("ndcg@10", "recall@10", "mrr@10")} | {
        "val/ndcg@10", "val/recall@10", "val/mrr@10"}
    assert out["bm25"]["val/ndcg@10"] == pytest.approx(1.0) and out["bm25"]["val/mrr@10"] == pytest.approx(1.0)

    def no_search(*a, **k):
        raise AssertionError("scored again instead of read from the cache")

    monkeypatch.setattr(bl, "bm25_search", no_search)
    assert bl.baseline_metrics([SET], ["bm25"], cache_dir=tmp_path) == out
    # another bm25s scores again: the cache key holds the scorer's version
    monkeypatch.setattr(hashing, "library_versions", lambda names: {n: "0.0.1" for n in names})
    with pytest.raises(AssertionError, match="scored again"):
        bl.baseline_metrics([SET], ["bm25"], cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        bl.baseline_metrics([SET], ["tfidf"])


def test_val_metrics_average_over_sets():
    m = bl.val_metrics({"a": {"ndcg@10": 0.2, "recall@10": 1.0, "mrr@10": 0.1},
                        "b": {"ndcg@10": 0.4, "recall@10": 0.0, "mrr@10": 0.3}})
    assert m["val/ndcg@10"] == pytest.approx(0.3) and m["val/a/recall@10"] == 1.0 and m["val/mrr@10"] == pytest.approx(0.2)


@pytest.mark.slow
def test_minilm_baseline_retrieves_by_meaning():
    out = bl.baseline_metrics([SET], ["minilm"])
    assert out["minilm"]["val/recall@10"] == 1.0 and out["minilm"]["val/ndcg@10"] > 0.8
