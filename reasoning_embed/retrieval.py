"""Exact dense retrieval and its metrics, shared by training-time validation and the local eval tasks.

Search (:class:`Searcher`, the one search of the project: validation, the mteb adapter and mining) is inner
product (embeddings are L2-normalised, so cosine): exact with faiss ``IndexFlatIP`` on CPU or a chunked
torch matmul + top-k on GPU, approximate with faiss IVF for corpora of millions. Metrics come from torchmetrics; relevant documents that the top-k
missed are appended below the cut-off so recall and nDCG see every relevant document.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


INDEXES = ("flat", "ivf", "torch")


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


class Searcher:
    """Top-k inner-product search over a fixed passage table, queried in chunks: the project's one search.

    ``flat`` is exact (faiss ``IndexFlatIP``); ``ivf`` (faiss ``IndexIVFFlat``, inner product) is approximate
    and only worth it for corpora of millions; ``torch`` is a chunked matmul + top-k on the passages' device
    (the GPU path). ``search`` answers in the kind it is asked in: numpy queries get numpy arrays, torch
    queries get CPU torch tensors (scores float32, indices int64)."""

    def __init__(self, passages, index: str = "flat", ivf_nlist: int | None = None, ivf_nprobe: int = 32,
                 ivf_train_size: int = 100_000, device: str | torch.device | None = None, seed: int = 0,
                 torch_chunk: int = 1024):
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.kind, self.n = index, int(passages.shape[0])
        self.torch_chunk = torch_chunk
        if index == "torch":
            if isinstance(passages, torch.Tensor):
                self.passages = passages.detach().float().to(device or passages.device)
            else:
                self.passages = torch.from_numpy(np.array(passages, dtype=np.float32)).to(device or "cpu")
            return
        import faiss

        x = _as_numpy(passages)
        d = x.shape[1]
        if index == "flat":
            self.index = faiss.IndexFlatIP(d)
        else:
            nlist = ivf_nlist or max(1, min(self.n // 39, int(4 * math.sqrt(self.n))))
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = x if self.n <= ivf_train_size else x[np.sort(rng.choice(self.n, ivf_train_size, replace=False))]
            self.index.train(sample)
            self.index.nprobe = min(ivf_nprobe, nlist)
            self._quantizer = quantizer  # keep alive
        self.index.add(x)

    def search(self, queries, k: int):
        """(scores, indices), both n_q x k, best first; k is capped at the table size."""
        k = min(k, self.n)
        as_torch = isinstance(queries, torch.Tensor)
        if self.kind == "torch":
            q_all = queries if as_torch else torch.from_numpy(np.array(queries, dtype=np.float32))
            scores, idx = [], []
            for start in range(0, q_all.shape[0], self.torch_chunk):
                q = q_all[start:start + self.torch_chunk].to(self.passages.device).float()
                s, i = torch.topk(q @ self.passages.T, k, dim=1)
                scores.append(s.cpu())
                idx.append(i.cpu())
            s = torch.cat(scores) if scores else torch.zeros(0, k)
            i = torch.cat(idx) if idx else torch.zeros(0, k, dtype=torch.long)
            return (s, i) if as_torch else (s.numpy(), i.numpy())
        s, i = self.index.search(_as_numpy(queries), k)
        return (torch.from_numpy(s), torch.from_numpy(i).long()) if as_torch else (s, i)


def exact_search(queries: torch.Tensor, corpus: torch.Tensor, k: int, backend: str = "auto",
                 chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product neighbours of each query: (scores, indices), both n_q x k, on CPU.
    ``backend``: ``faiss`` (flat index), ``torch``, or ``auto`` (torch for CUDA queries, else faiss)."""
    if backend == "auto":
        backend = "torch" if queries.is_cuda else "faiss"
    if backend not in ("faiss", "torch"):
        raise ValueError(f"search backend must be auto, faiss or torch, got {backend!r}")
    return Searcher(corpus, "flat" if backend == "faiss" else "torch", torch_chunk=chunk_size).search(queries, k)


def merge_topk(best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor],
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top-k of a corpus searched in chunks: merge ``best`` with a chunk's (scores, global
    indices). Still exact: every document is in some chunk's top-k or in no overall top-k."""
    if best is None:
        return new
    s, i = torch.cat([best[0], new[0]], 1), torch.cat([best[1], new[1]], 1)
    s, pos = torch.topk(s, min(k, s.shape[1]), dim=1)
    return s, torch.gather(i, 1, pos)


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
