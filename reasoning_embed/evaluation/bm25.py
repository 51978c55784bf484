"""``model=bm25`` in evaluation: BM25 (``bm25s``, Lucene variant, k1 1.5, b 0.75) behind mteb's search protocol.

The same scorer and code-aware tokens as the built-in held-out baseline (:mod:`.baselines`), so any benchmark
the evaluate entry point runs gets its lexical baseline: ``python -m reasoning_embed.evaluate model=bm25
benchmark=local`` (or ``bright``). Reranking tasks (BRIGHT's excluded ids, ``top_ranked``) score each query's
candidates only. BM25 has no embeddings: a task that needs them (STS, classification, clustering) fails
with a clear error, recorded as a failed task like any other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BM25_SPECS = ("bm25",)


def is_bm25(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower() in BM25_SPECS


class Bm25SearchAdapter:
    """mteb ``SearchProtocol`` over BM25; records calls and instructions like the encoder adapter."""

    spec_kind = "bm25"

    def __init__(self, name: str = "bm25"):
        self.calls: list[dict] = []
        self.instructions_used: dict[str, dict] = {}
        self._retriever = None
        self._ids: list[str] = []
        self._meta = self._make_meta(name)

    def _make_meta(self, name: str):
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.create_empty(overwrites=dict(
            name=f"reasoning-embed/{name}", revision="local", loader=None, n_parameters=0, embed_dim=None,
            use_instructions=False, framework=[], modalities=["text"], open_weights=True))

    @property
    def mteb_model_meta(self):
        return self._meta

    def encode(self, inputs, *, task_metadata, **kwargs: Any):
        raise NotImplementedError(f"{task_metadata.name} ({task_metadata.type}) needs embeddings; model=bm25 "
                                  f"scores retrieval and reranking tasks only")

    def _record(self, task_metadata, hf_split, hf_subset, side: str, n: int) -> None:
        self.calls.append({"task": task_metadata.name, "split": hf_split, "subset": hf_subset,
                           "prompt_type": side, "instruction": None, "n": n})
        entry = self.instructions_used.setdefault(task_metadata.name, {
            "instruction": None, "source": "bm25 (no instruction)", "type": task_metadata.type, "sides": []})
        if side not in entry["sides"]:
            entry["sides"].append(side)

    def index(self, corpus, *, task_metadata, hf_split: str, hf_subset: str, encode_kwargs: dict,
              num_proc: int | None = None, **kwargs: Any) -> None:
        from reasoning_embed.evaluation.baselines import bm25_index

        texts = [_doc_text(row) for row in corpus]
        self._ids = [str(i) for i in corpus["id"]]
        self._retriever = bm25_index(texts)
        self._record(task_metadata, hf_split, hf_subset, "document", len(texts))

    def search(self, queries, *, task_metadata, hf_split: str, hf_subset: str, top_k: int, encode_kwargs: dict,
               top_ranked: dict | None = None, num_proc: int | None = None, **kwargs: Any) -> dict:
        from reasoning_embed.evaluation.baselines import code_tokens

        if self._retriever is None:
            raise RuntimeError("search() called before index()")
        qids = [str(i) for i in queries["id"]]
        tokens = [code_tokens(_query_text(row)) for row in queries]
        self._record(task_metadata, hf_split, hf_subset, "query", len(qids))
        pos = {doc: j for j, doc in enumerate(self._ids)}
        results: dict[str, dict[str, float]] = {}
        for qid, toks in zip(qids, tokens):
            scores = self._retriever.get_scores(toks)
            if top_ranked is not None:
                cands = np.array([pos[str(c)] for c in (top_ranked.get(qid) or []) if str(c) in pos], dtype=np.int64)
            else:
                cands = np.arange(len(self._ids))
            if cands.size == 0:
                results[qid] = {}
                continue
            k = min(top_k, cands.size)
            best = cands[np.argsort(-scores[cands], kind="stable")[:k]]
            results[qid] = {self._ids[j]: float(scores[j]) for j in best}
        self._retriever, self._ids = None, []
        return results


def _doc_text(row) -> str:
    title, text = row.get("title") or "", row.get("text") or ""
    return f"{title} {text}".strip()


def _query_text(row) -> str:
    text = row.get("text")
    if isinstance(text, list):  # conversational queries: the turns joined
        return " ".join(map(str, text))
    return str(text or "")
