"""Exact dense retrieval and its metrics, shared by training-time validation and the local eval tasks.

Search is exact inner product (embeddings are L2-normalised, so cosine): faiss ``IndexFlatIP`` on CPU,
chunked torch matmul + top-k on GPU. Metrics come from torchmetrics; relevant documents that the top-k
missed are appended below the cut-off so recall and nDCG see every relevant document.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def exact_search(queries: torch.Tensor, corpus: torch.Tensor, k: int, backend: str = "auto",
                 chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of each query: (scores, indices), both n_q x k."""
    k = min(k, corpus.shape[0])
    if backend == "auto":
        backend = "torch" if queries.is_cuda else "faiss"
    if backend == "faiss":
        import faiss

        index = faiss.IndexFlatIP(corpus.shape[1])
        index.add(np.ascontiguousarray(corpus.detach().float().cpu().numpy()))
        scores, idx = index.search(np.ascontiguousarray(queries.detach().float().cpu().numpy()), k)
        return torch.from_numpy(scores), torch.from_numpy(idx).long()
    if backend != "torch":
        raise ValueError(f"search backend must be auto, faiss or torch, got {backend!r}")
    scores, idx = [], []
    for start in range(0, queries.shape[0], chunk_size):
        s, i = torch.topk(queries[start:start + chunk_size].float() @ corpus.float().T, k, dim=1)
        scores.append(s.cpu())
        idx.append(i.cpu())
    return torch.cat(scores), torch.cat(idx)


@dataclass
class RetrievalSet:
    """Queries (with instructions), a corpus and graded relevance: ``qrels[q] = {doc index: grade}``."""

    name: str
    queries: list[str]
    instructions: list[str]
    corpus: list[str]
    qrels: list[dict[int, int]]


def retrieval_metrics(scores: torch.Tensor, indices: torch.Tensor, qrels: list[dict[int, int]],
                      k: int = 10) -> dict[str, float]:
    from torchmetrics.functional.retrieval import (
        retrieval_normalized_dcg,
        retrieval_recall,
        retrieval_reciprocal_rank,
    )

    ndcg, recall, mrr = [], [], []
    for q in range(scores.shape[0]):
        rel = qrels[q]
        got = indices[q].tolist()
        preds = scores[q].tolist()
        target = [rel.get(d, 0) for d in got]
        floor = min(preds) - 1.0
        for d, grade in rel.items():  # relevant documents the search did not return, ranked below all
            if d not in got and grade > 0:
                preds.append(floor)
                target.append(grade)
                floor -= 1.0
        p, t = torch.tensor(preds), torch.tensor(target)
        ndcg.append(retrieval_normalized_dcg(p, t, top_k=k).item())
        recall.append(retrieval_recall(p, t > 0, top_k=k).item())
        mrr.append(retrieval_reciprocal_rank(p, t > 0, top_k=k).item())
    return {f"ndcg@{k}": float(np.mean(ndcg)), f"recall@{k}": float(np.mean(recall)), f"mrr@{k}": float(np.mean(mrr))}


@torch.no_grad()
def evaluate_retrieval(encoder, data: RetrievalSet, k: int = 10, batch_size: int = 64, backend: str = "auto") -> dict:
    q = encoder.encode(data.queries, data.instructions, batch_size=batch_size)
    d = encoder.encode(data.corpus, None, batch_size=batch_size)
    if encoder.device.type == "cuda":
        q, d = q.to(encoder.device), d.to(encoder.device)
    scores, idx = exact_search(q, d, k, backend)
    return retrieval_metrics(scores, idx, data.qrels, k)


def retrieval_set_from_rows(name: str, rows, max_queries: int | None = None, seed: int = 0) -> RetrievalSet:
    """Queries of a held-out file against the union of its positives (deduplicated)."""
    import random

    corpus, where = [], {}
    for row in rows:
        for p in row.pos:
            if p not in where:
                where[p] = len(corpus)
                corpus.append(p)
    chosen = list(range(len(rows)))
    if max_queries and len(rows) > max_queries:
        chosen = sorted(random.Random(seed).sample(chosen, max_queries))
    return RetrievalSet(
        name=name,
        queries=[rows[i].query for i in chosen],
        instructions=[rows[i].instruction for i in chosen],
        corpus=corpus,
        qrels=[{where[p]: 1 for p in rows[i].pos} for i in chosen],
    )
