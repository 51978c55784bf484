"""Top-k inner-product search over a fixed passage table, queried in chunks.

``flat`` is exact (faiss ``IndexFlatIP``); ``ivf`` (faiss ``IndexIVFFlat``, inner product) is approximate
and only worth it for corpora of millions; ``torch`` is a chunked matmul + top-k (the GPU path, and the
benchmark's comparison). Embeddings are L2-normalised, so inner product = cosine.
"""

from __future__ import annotations

import math

import numpy as np

INDEXES = ("flat", "ivf", "torch")


class Searcher:
    def __init__(self, passages: np.ndarray, index: str = "flat", ivf_nlist: int | None = None,
                 ivf_nprobe: int = 32, ivf_train_size: int = 100_000, device: str = "cpu", seed: int = 0,
                 torch_chunk: int = 1024):
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.kind, self.n = index, int(passages.shape[0])
        self.torch_chunk = torch_chunk
        if index == "torch":
            import torch

            self.device = device
            self.passages = torch.from_numpy(np.array(passages, dtype=np.float32)).to(device)  # a writable copy
            return
        import faiss

        x = np.ascontiguousarray(passages, dtype=np.float32)
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

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, indices), both n_q x k, best first; k is capped at the table size."""
        k = min(k, self.n)
        if self.kind == "torch":
            import torch

            scores, idx = [], []
            q_all = torch.from_numpy(np.array(queries, dtype=np.float32))
            for start in range(0, q_all.shape[0], self.torch_chunk):
                q = q_all[start:start + self.torch_chunk].to(self.device)
                s, i = torch.topk(q @ self.passages.T, k, dim=1)
                scores.append(s.cpu().numpy())
                idx.append(i.cpu().numpy())
            if not scores:
                return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
            return np.concatenate(scores), np.concatenate(idx)
        scores, idx = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, idx
